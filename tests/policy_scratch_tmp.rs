#[test]
fn show() {
    let src = "package ciba_gate\nimport rego.v1\ndeny contains x if x := no_such_fn(input.y)\nallow if input.x\n";
    let mut e = regorus::Engine::new();
    e.add_policy("b.rego".into(), src.into()).unwrap();
    let c = e.compile_with_entrypoint(&regorus::Rc::from("data.ciba_gate.deny"));
    println!("compile: {:?}", c.as_ref().err().map(|e| e.to_string()));
    let c = c.unwrap();
    let p = regorus::languages::rego::compiler::Compiler::compile_from_policy(
        &c,
        &["data.ciba_gate.deny"],
    );
    println!("rvm: {:?}", p.err().map(|e| e.to_string()));
    e.set_input(regorus::Value::from_json_str(r#"{"y": 1}"#).unwrap());
    println!(
        "eval: {:?}",
        e.eval_rule("data.ciba_gate.deny".into())
            .map_err(|e| e.to_string())
    );
    let mut e = regorus::Engine::new();
    e.add_policy(
        "c.rego".into(),
        "package ciba_gate\nimport rego.v1\ndeny contains x if x := to_number(input.y)\n".into(),
    )
    .unwrap();
    e.set_input(regorus::Value::from_json_str(r#"{"y": "abc"}"#).unwrap());
    println!(
        "to_number interp: {:?}",
        e.eval_rule("data.ciba_gate.deny".into())
            .map_err(|e| e.to_string())
    );
}
