//! The pages, one module each. They render from the live snapshot (overview) or from
//! PostgreSQL (device history, alerts, the operation log), as server-side HTML that
//! reads without JavaScript; `static/console.js` keeps them current.

pub mod alerts;
pub mod device;
pub mod login;
pub mod overview;
pub mod pipeline;
