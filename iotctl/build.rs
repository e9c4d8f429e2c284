// sqlx::migrate!("../migrations") embeds the SQL at compile time (for `iotctl health`'s
// schema check); rebuild when it changes.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
