#[test]
fn show() {
    let r = ciba_gate::policy::testing::run_tests(std::path::Path::new("policies")).unwrap();
    println!("{}", r.render());
    let e = ciba_gate::policy::PolicyEngine::load(std::path::Path::new("policies")).unwrap();
    println!("{} {:?}", e.revision(), e.eval_path());
    for ex in ciba_gate::policy::testing::bundled_examples().iter().take(40).skip(17) {
        println!("{}: {}", ex.name, serde_json::to_string(&e.decide(&ex.input)).unwrap());
    }
}
