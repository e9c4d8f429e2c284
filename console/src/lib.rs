//! The plant console: the plant live in a browser, for the people on the floor. One
//! axum server renders the pages from one shared live view (`live`) and PostgreSQL
//! (`plant`), streams changes over Server-Sent Events, and lets logged-in operators
//! (`auth`) acknowledge and resolve alerts through `operations`, as `iotctl` does.

pub mod app;
pub mod auth;
pub mod config;
pub mod layout;
pub mod live;
pub mod pages;
pub mod pipeline;
pub mod plant;
pub mod state;

pub use app::Console;
