mod common;
use common::*;

#[test]
fn a_request_reaches_a_backend_and_comes_back() {
    let a = Backend::start("a");
    let lb = start_lb(&[&a], "");
    let (status, body, backend) = get(&client(), &format!("{}/hello?x=1", lb.url()));
    assert_eq!(status, 200);
    assert_eq!(backend.as_deref(), Some("a"));
    assert!(body.contains("target /hello?x=1"), "{body}");
}
