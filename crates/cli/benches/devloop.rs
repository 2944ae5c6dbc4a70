//! Dev-loop benchmark (written below).
fn main() {}
