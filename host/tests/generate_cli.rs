//! `waypoint generate` through the real binary: every prompt gets its tokens, seeded sampling is
//! reproducible, native and component schedulers agree, bad input is reported.

use std::process::Command;

fn run(name: &str, prompts: &str, extra: &[&str]) -> (bool, String, Vec<serde_json::Value>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("waypoint-gen-{name}-"))
        .tempdir()
        .expect("scratch dir");
    let (input, output) = (
        dir.path().join("prompts.jsonl"),
        dir.path().join("out.jsonl"),
    );
    std::fs::write(&input, prompts).expect("write prompts");
    let result = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args([
            "generate",
            "--prompts",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .args([
            "--num-blocks",
            "40",
            "--block-size",
            "4",
            "--max-model-len",
            "128",
        ])
        .args(extra)
        .output()
        .expect("the binary runs");
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    lines.sort_by_key(|l| l["id"].as_str().unwrap_or_default().to_owned());
    (
        result.status.success(),
        String::from_utf8_lossy(&result.stderr).into_owned(),
        lines,
    )
}

const PROMPTS: &str = r#"{"id":"a","prompt":"The scheduler hands out blocks","max_tokens":10}
{"id":"b","prompt":"The scheduler hands out slots","max_tokens":7,"temperature":0.9,"top_k":40,"top_p":0.95,"seed":3}
{"id":"c","prompt_token_ids":[1,2,3,4,5,6,7,8,9],"max_tokens":12}
"#;

fn tokens(lines: &[serde_json::Value]) -> Vec<serde_json::Value> {
    lines.iter().map(|l| l["token_ids"].clone()).collect()
}

#[test]
fn every_prompt_gets_its_tokens_reproducibly_on_any_scheduler() {
    let (ok, stderr, first) = run("first", PROMPTS, &["--scheduler", "fcfs"]);
    assert!(ok, "{stderr}");
    let counts: Vec<usize> = first
        .iter()
        .map(|l| l["token_ids"].as_array().unwrap().len())
        .collect();
    assert_eq!(counts, [10, 7, 12]);
    assert!(first.iter().all(|l| l["finish_reason"] == "length"));
    assert!(first
        .iter()
        .all(|l| l["timings"]["e2e_ms"].as_f64().unwrap() > 0.0));
    let (_, _, again) = run("again", PROMPTS, &["--scheduler", "fcfs"]);
    assert_eq!(
        tokens(&first),
        tokens(&again),
        "seeded sampling is reproducible"
    );
    let (_, _, native) = run(
        "native",
        PROMPTS,
        &["--scheduler", "native", "--no-enable-prefix-caching"],
    );
    assert_eq!(tokens(&first), tokens(&native));
}

#[test]
fn malformed_prompts_and_unknown_models_are_reported() {
    let (ok, stderr, _) = run(
        "bad-line",
        "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"colour\":1}\n",
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("line 2"), "{stderr}");
    let (ok, stderr, _) = run("bad-model", PROMPTS, &["--model", "llama-70b"]);
    assert!(!ok);
    assert!(stderr.contains("unknown model"), "{stderr}");
}

#[test]
fn a_hugging_face_checkpoint_generates_with_its_tokenizer() {
    let fixture = format!(
        "{}/../tests/fixtures/tiny-llama",
        env!("CARGO_MANIFEST_DIR")
    );
    let prompts = "{\"id\":\"hf\",\"prompt\":\"w5 w9 w14\",\"max_tokens\":6,\"ignore_eos\":true}\n";
    let (ok, stderr, lines) = run(
        "hf",
        prompts,
        &["--model", &fixture, "--scheduler", "priority"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(lines[0]["token_ids"].as_array().unwrap().len(), 6);
    let text = lines[0]["text"].as_str().unwrap();
    assert!(
        text.split(' ').all(|word| word.starts_with('w')),
        "decoded with the checkpoint's tokenizer: {text}"
    );
}
