//! The parser never panics, whatever it is fed.

use proptest::prelude::*;
use slipway_spec::{BuildContext, compile, lint};

/// Fragments that make YAML and Drone structure likely, so the fuzzing goes deep.
fn yamlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "kind: pipeline\n",
        "steps:\n",
        "- name: a\n",
        "  image: x\n",
        "  depends_on: [a, b]\n",
        "pipeline:\n",
        "  a:\n",
        "    image: x\n",
        "when:\n",
        "  branch: [m*, \"[\"]\n",
        "---\n",
        "&a ",
        "*a",
        "<<: *a\n",
        "{",
        "}",
        "[",
        "]",
        ": ",
        "- ",
        "  ",
        "\n",
        "${X",
        "${X:-y}",
        "$$",
        "\"",
        "'",
        "|\n",
        ">\n",
        "#c\n",
        "\t",
        "é",
        "名",
        "trigger: {status: x}\n",
        "volumes: [{name: v, temp: {}}]\n",
        "services:\n",
        "matrix:\n  A: [1, 2]\n",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn lint_and_compile_never_panic_on_structured_input(text in yamlish()) {
        let _ = lint(&text);
        let _ = compile(&text, &BuildContext::default());
    }

    #[test]
    fn lint_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = lint(&text);
    }
}

#[test]
fn deep_nesting_and_alias_bombs_are_bounded() {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let _ = lint(&deep);
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        let prev = if i == 0 {
            "a".to_owned()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let out = lint(&bomb);
    assert!(
        out.iter()
            .any(|d| d.message.contains("aliases expand to more than")),
        "{out:?}"
    );
}
