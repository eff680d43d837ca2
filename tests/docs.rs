//! The book cannot drift from the code (issue 22): each reference page is checked against what a
//! running hooksign really accepts, serves, exports and answers. The configuration reference
//! against the keys serde reads ([`hooksign::config::accepted_keys`]), the admin API page against
//! the served OpenAPI document, the operations page and `deploy/alerts.yaml` against a real
//! `/metrics` scrape, the error tables against every code the proxy and admin port return. The
//! customers' verification page runs its own Node and Python blocks against real deliveries (and
//! its Go, Ruby, PHP and Java code wherever those tools are installed), and every relative link
//! and `#anchor` in `docs/src` and the README must resolve.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use hooksign::signing::Scheme;
use http::StatusCode;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn page(name: &str) -> String {
    let path = Path::new(ROOT).join("docs/src").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The part of `text` from the heading `heading` to the next heading of the same level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.split(' ').next().unwrap();
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let rest = &text[start + heading.len() + 2..];
    let end = rest.find(&format!("\n{level} ")).unwrap_or(rest.len());
    &rest[..end]
}

/// The first cell of each table row of `text`, when it is one `code` span.
fn first_cells(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(cell, _)| cell))
        .collect()
}

/// The names a running hooksign exports on `/metrics` (its `# HELP` lines).
async fn exported_metrics() -> BTreeSet<String> {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let endpoint = EndpointSpec::new(upstream.url("/in"));
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&[&endpoint])).await;
    let reply = server
        .deliver(
            &[
                ("x-webhook-id", &endpoint.uuid),
                ("x-webhook-event", "invoice.created"),
            ],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // An admin request first, so the per-route counter has a series to show.
    assert_eq!(server.admin_get("/healthz").await.status, StatusCode::OK);
    let scrape = server.admin_get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    let names: BTreeSet<String> = scrape
        .text()
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .map(|rest| rest.split(' ').next().unwrap().to_owned())
        .collect();
    assert!(names.len() > 20, "{names:?}");
    names
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Under CI a missing tool fails the test; elsewhere it is skipped with a line saying so.
fn skip_or_fail(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} (required under CI)"
    );
    println!("skipped: {what}");
}

// === configuration reference ===

/// `(section, key) -> default cell` for every row of the configuration reference.
fn documented_keys() -> BTreeMap<(String, String), String> {
    let text = page("configuration.md");
    let mut keys = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## `[") {
            let name = heading.trim_start_matches('[').trim_end_matches(['`', ']']);
            current = Some(name.to_owned());
            continue;
        }
        let (Some(section), Some(rest)) = (&current, line.strip_prefix("| `")) else {
            continue;
        };
        let (key, rest) = rest.split_once("` |").unwrap();
        let default = rest.split(" | ").next().unwrap().trim().to_owned();
        let previous = keys.insert((section.clone(), key.to_owned()), default);
        assert!(previous.is_none(), "[{section}] {key} is documented twice");
    }
    keys
}

#[test]
fn the_configuration_reference_lists_every_accepted_key_and_no_other() {
    let accepted = hooksign::config::accepted_keys();
    let sections: BTreeSet<&str> = accepted
        .iter()
        .map(|(section, _)| *section)
        .filter(|s| !s.is_empty())
        .collect();
    let documented = documented_keys();
    let mut expected = BTreeSet::new();
    for (section, keys) in &accepted {
        for key in *keys {
            if section.is_empty() {
                assert!(sections.contains(key), "section {key} has no key list");
                continue;
            }
            // A nested table (`[store] etcd`) is documented as its own section.
            if documented.contains_key(&(section.to_string(), key.to_string()))
                || !sections.contains(format!("{section}.{key}").as_str())
            {
                expected.insert((section.to_string(), key.to_string()));
            }
        }
    }
    let documented_set: BTreeSet<(String, String)> = documented.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&documented_set).collect();
    assert!(
        missing.is_empty(),
        "accepted by the code but missing from docs/src/configuration.md: {missing:?}"
    );
    let unknown: Vec<_> = documented_set.difference(&expected).collect();
    assert!(
        unknown.is_empty(),
        "documented in docs/src/configuration.md but not accepted by the code: {unknown:?}"
    );
}

#[test]
fn every_documented_default_parses_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut checked = 0;
    for ((section, key), default) in documented_keys() {
        let Some(value) = default.strip_prefix('`').and_then(|v| v.strip_suffix('`')) else {
            continue; // "none", "derived", "required", "the cores available"
        };
        if section.ends_with(".tokens") {
            continue; // a token table needs its required keys beside it
        }
        let text = format!("[{section}]\n{key} = {value}\n");
        if let Err(err) = hooksign::config::Config::parse(&text, &path) {
            panic!("[{section}] {key} = {value}, as documented, does not parse: {err}");
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} defaults checked");
    // The check itself refuses an unknown key.
    assert!(hooksign::config::Config::parse("[proxy]\nno_such_key = 1\n", &path).is_err());
}

// === admin API page ===

#[tokio::test]
async fn the_api_page_lists_every_route_of_the_served_openapi_document() {
    let server = TestServer::start(&ConfigSpec::new(None), "").await;
    let reply = server.admin_get("/api/v1/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let document = reply.json();
    let text = page("admin-api.md");
    let table = first_cells(&text);
    let mut served = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let route = format!("{} {path}", method.to_uppercase());
            assert!(
                text.contains(&format!("`{route}`")),
                "{route} is served but missing from docs/src/admin-api.md"
            );
            served.insert(route);
        }
    }
    assert!(served.len() >= 10, "{served:?}");
    // Every /api/v1 route the page's table lists is served (the document does not list itself).
    for route in table
        .iter()
        .filter(|r| r.contains(" /api/v1/") && **r != "GET /api/v1/openapi.json")
    {
        assert!(
            served.contains(*route),
            "{route} is in docs/src/admin-api.md but not in the OpenAPI document"
        );
    }
}

// === operations page and alerts ===

#[tokio::test]
async fn the_operations_page_lists_every_metric_a_running_hooksign_exports() {
    let exported = exported_metrics().await;
    let text = page("operations.md");
    let table: BTreeSet<&str> = first_cells(section(&text, "## Metrics"))
        .into_iter()
        .collect();
    for name in &exported {
        assert!(
            table.contains(name.as_str()),
            "{name} is exported but missing from the metrics table of docs/src/operations.md"
        );
    }
    for name in table.iter().filter(|n| n.starts_with("hooksign_")) {
        assert!(
            exported.contains(*name),
            "{name} is in docs/src/operations.md but not exported"
        );
    }
}

#[tokio::test]
async fn alert_rules_use_only_exported_metrics_and_pass_promtool() {
    let exported = exported_metrics().await;
    let path = Path::new(ROOT).join("deploy/alerts.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            let expr = rule["expr"].as_str().unwrap();
            let mut used = 0;
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("hooksign_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .filter(|base| exported.contains(*base))
                    .unwrap_or(word);
                assert!(
                    exported.contains(base),
                    "{name}: {word} is not a metric hooksign exports"
                );
                used += 1;
            }
            assert!(used > 0 || name == "HooksignDown", "{name} names no metric");
            alerts.push(name);
        }
    }
    let operations = page("operations.md");
    for name in &alerts {
        assert!(
            operations.contains(&format!("| `{name}` |")),
            "{name} is missing from the alerts table of docs/src/operations.md"
        );
    }
    if !on_path("promtool") {
        return skip_or_fail("promtool is not on PATH (Debian package `prometheus`)");
    }
    for args in [
        ["check", "rules", "deploy/alerts.yaml"],
        ["test", "rules", "deploy/alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(ROOT)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// === error tables ===

/// The codes an admin error can carry, read from the two places that name them: `fn code` of
/// `AdminError` and `generic_code` (axum's own rejections).
fn admin_codes() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for (file, start) in [
        ("src/admin/error.rs", "pub fn code(&self)"),
        ("src/admin.rs", "fn generic_code("),
    ] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        let body = &text[text
            .find(start)
            .unwrap_or_else(|| panic!("{file}: {start}"))..];
        let body = &body[..body.find("\n}\n").unwrap_or(body.len())];
        for quoted in body.split("=> \"").skip(1) {
            codes.insert(quoted.split('"').next().unwrap().to_owned());
        }
    }
    codes
}

#[test]
fn the_error_tables_list_every_code_the_ports_return() {
    let text = page("troubleshooting.md");
    let proxy: BTreeSet<&str> =
        first_cells_after_status(section(&text, "## Errors of the proxy port"));
    let admin: BTreeSet<&str> =
        first_cells_after_status(section(&text, "## Errors of the admin API"));
    let mut outcomes = BTreeSet::new();
    for outcome in hooksign::proxy::Outcome::ALL {
        let code = outcome.as_label();
        outcomes.insert(code);
        if matches!(code, "success" | "failed" | "client_closed") {
            assert!(
                code == "success" || text.contains(&format!("`{code}`")),
                "outcome {code} is not explained in docs/src/troubleshooting.md"
            );
            continue;
        }
        assert!(
            proxy.contains(code),
            "{code} is missing from the proxy error table of docs/src/troubleshooting.md"
        );
    }
    for code in &proxy {
        assert!(
            outcomes.contains(code),
            "{code}: not a code the proxy returns"
        );
    }
    let codes = admin_codes();
    assert!(codes.len() >= 18, "{codes:?}");
    for code in &codes {
        assert!(
            admin.contains(code.as_str()),
            "{code} is missing from the admin error table of docs/src/troubleshooting.md"
        );
    }
    for code in &admin {
        assert!(
            codes.contains(*code),
            "{code}: not a code the admin API returns"
        );
    }
    // The outcome list of hooksign_deliveries_total names every code too.
    let operations = page("operations.md");
    let deliveries = operations
        .lines()
        .find(|line| line.starts_with("| `hooksign_deliveries_total` |"))
        .unwrap();
    for code in outcomes {
        assert!(
            deliveries.contains(&format!("`{code}`")),
            "{code} is missing from the hooksign_deliveries_total outcomes"
        );
    }
}

/// The codes of an error table whose rows are `| status | `code` | …`.
fn first_cells_after_status(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|line| line.starts_with("| "))
        .filter_map(|line| line.split(" | `").nth(1))
        .filter_map(|rest| rest.split_once('`').map(|(code, _)| code))
        .collect()
}

// === the customers' verification page, run against real deliveries ===

/// UTF-8 and non-empty: what every receiver library handles.
const BODY: &str =
    r#"{"type":"invoice.paid","data":{"id":"inv_7","customer":"Zoë","amount":"99.00 €"}}"#;

/// The fenced blocks of `text` that follow a `<!-- verified-in-ci: {language}` marker.
fn verified_blocks(text: &str, language: &str) -> String {
    let marker = format!("<!-- verified-in-ci: {language}");
    let mut code = String::new();
    for part in text.split(&marker).skip(1) {
        let fence = part.find("\n```").expect("a fenced block after the marker");
        let body = &part[fence + 4..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body.find("\n```").expect("the block ends");
        code.push_str(&body[..=end]);
        code.push('\n');
    }
    assert!(
        !code.is_empty(),
        "no {language} block is marked verified-in-ci"
    );
    code
}

/// Delivers [`BODY`] through a real hooksign to an endpoint of every scheme (and, for the
/// schemes with overlap windows, one mid-rotation) and returns the cases a receiver must judge:
/// each delivery under each of its keys (must verify), under an unrelated key and with a changed
/// body (must not).
async fn delivered_cases() -> Vec<serde_json::Value> {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki, UpstreamOptions::default()).await;
    let mut endpoints = Vec::new();
    for scheme in Scheme::ALL {
        endpoints.push((
            scheme,
            EndpointSpec::with_scheme(upstream.url("/in"), scheme),
        ));
        if scheme.allows_overlap() {
            let mut rotated = EndpointSpec::with_scheme(upstream.url("/in"), scheme);
            let previous = EndpointSpec::with_scheme("", scheme).secret;
            rotated.previous = Some((previous, "2999-01-01T00:00:00Z".to_owned()));
            endpoints.push((scheme, rotated));
        }
    }
    let refs: Vec<&EndpointSpec> = endpoints.iter().map(|(_, e)| e).collect();
    let server = TestServer::start(&ConfigSpec::new(Some(&pki)), &store_toml(&refs)).await;
    let key = |scheme: Scheme, secret: &str| {
        if scheme == Scheme::StandardWebhooksEd25519 {
            hooksign::signing::EndpointSigner::new(
                scheme,
                &hooksign::secret::Secret::new(secret.to_owned()),
            )
            .unwrap()
            .public_key()
            .unwrap()
        } else {
            secret.to_owned()
        }
    };
    let encode = |body: &[u8]| base64::engine::general_purpose::STANDARD.encode(body);
    let mut cases = Vec::new();
    for (scheme, endpoint) in &endpoints {
        let reply = server
            .deliver(&[("x-webhook-id", &endpoint.uuid)], BODY)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.body.as_ref(), BODY.as_bytes());
        let headers: serde_json::Map<String, serde_json::Value> = seen
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().into()))
            .collect();
        let mut keys = vec![endpoint.secret.clone()];
        keys.extend(endpoint.previous.as_ref().map(|(secret, _)| secret.clone()));
        let rotated = if keys.len() > 1 { " mid-rotation" } else { "" };
        for (index, secret) in keys.iter().enumerate() {
            cases.push(serde_json::json!({
                "name": format!("{scheme}{rotated}: key {index} verifies"),
                "scheme": scheme.as_str(), "key": key(*scheme, secret),
                "body": encode(&seen.body), "headers": headers, "expect": true,
            }));
        }
        let unrelated = EndpointSpec::with_scheme("", *scheme).secret;
        cases.push(serde_json::json!({
            "name": format!("{scheme}{rotated}: an unrelated key is refused"),
            "scheme": scheme.as_str(), "key": key(*scheme, &unrelated),
            "body": encode(&seen.body), "headers": headers, "expect": false,
        }));
        cases.push(serde_json::json!({
            "name": format!("{scheme}{rotated}: a changed body is refused"),
            "scheme": scheme.as_str(), "key": key(*scheme, &endpoint.secret),
            "body": encode(BODY.replace("99.00", "9.00").as_bytes()), "headers": headers,
            "expect": false,
        }));
    }
    cases
}

/// Runs `program args` in a fresh directory holding `files`, with `input` on stdin; each of the
/// `cases` cases must print a line starting `ok `.
fn run_receiver(program: &Path, args: &[&str], files: &[(&str, &str)], input: &str, cases: usize) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running {}: {err}", program.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the page's {} code judged hooksign's deliveries wrongly:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        cases,
        "{stdout}"
    );
}

/// The cases as one JSON array, for the harnesses that parse JSON (Node, Python).
fn case_json(cases: &[serde_json::Value]) -> String {
    serde_json::Value::Array(cases.to_vec()).to_string()
}

/// The cases as lines, for the harnesses that read no JSON (Java, Go, Ruby, PHP); the one home of
/// the format. One case per line, tab-separated: `name`, `scheme`, `key`, the body in base64,
/// `true` or `false` (must it verify?), then the headers as space-separated `name=value` pairs,
/// the name lowercase and the value in base64.
fn case_lines(cases: &[serde_json::Value]) -> String {
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    cases
        .iter()
        .map(|c| {
            let headers: Vec<String> = c["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, value)| format!("{name}={}", encode(value.as_str().unwrap())))
                .collect();
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\n",
                c["name"].as_str().unwrap(),
                c["scheme"].as_str().unwrap(),
                c["key"].as_str().unwrap(),
                c["body"].as_str().unwrap(),
                c["expect"].as_bool().unwrap(),
                headers.join(" ")
            )
        })
        .collect()
}

/// [`delivered_cases`] but the Ed25519 ones: the page gives Ed25519 code only for Node and
/// Python, and a prose pointer for the other languages.
async fn hmac_cases() -> Vec<serde_json::Value> {
    let cases: Vec<serde_json::Value> = delivered_cases()
        .await
        .into_iter()
        .filter(|c| c["scheme"] != Scheme::StandardWebhooksEd25519.as_str())
        .collect();
    assert!(cases.len() >= 12, "{cases:?}");
    cases
}

/// The first fenced block of `text` opened with ```` ```{language} ````, up to its closing fence.
fn fenced_block<'a>(text: &'a str, language: &str) -> &'a str {
    let open = format!("```{language}\n");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("no {language} block"))
        + open.len();
    let end = text[start..].find("\n```").expect("the block ends");
    &text[start..=start + end]
}

/// The tools that run the page's Java, Go, Ruby and PHP code are not installed by CI: where one
/// is not on PATH, its test is skipped with a line saying so (even under CI).
fn skip_unless_on_path(tool: &str) -> bool {
    if on_path(tool) {
        return false;
    }
    println!("skipped: {tool} is not on PATH");
    true
}

const NODE_HARNESS: &str = r#"
const verifiers = {
  'storno': verifyStorno,
  'github': verifyGithub,
  'stripe': verifyStripe,
  'standard-webhooks': verifyStandardWebhooks,
  'standard-webhooks-ed25519': verifyStandardWebhooksEd25519,
};
const cases = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
let failed = 0;
for (const c of cases) {
  const got = verifiers[c.scheme](c.key, Buffer.from(c.body, 'base64'), c.headers);
  const ok = got === c.expect;
  if (!ok) failed += 1;
  console.log(`${ok ? 'ok' : 'FAIL'} ${c.name} (got ${got})`);
}
process.exit(failed ? 1 : 0);
"#;

const PYTHON_HARNESS: &str = r#"
import json, sys
VERIFIERS = {
    "storno": verify_storno,
    "github": verify_github,
    "stripe": verify_stripe,
    "standard-webhooks": verify_standard_webhooks,
    "standard-webhooks-ed25519": verify_standard_webhooks_ed25519,
}
failed = 0
for case in json.load(sys.stdin):
    got = VERIFIERS[case["scheme"]](case["key"], base64.b64decode(case["body"]), case["headers"])
    ok = got is case["expect"]
    failed += not ok
    print(f"{'ok' if ok else 'FAIL'} {case['name']} (got {got})")
sys.exit(1 if failed else 0)
"#;

#[tokio::test]
async fn the_verification_page_node_code_verifies_real_deliveries() {
    let node = std::env::var_os("HOOKSIGN_DOCS_NODE").unwrap_or_else(|| "node".into());
    if Command::new(&node).arg("--version").output().is_err() {
        return skip_or_fail("node is not on PATH (Debian package `nodejs`)");
    }
    let code = verified_blocks(&page("verifying.md"), "node") + NODE_HARNESS;
    let cases = delivered_cases().await;
    let files = [("receiver.js", code.as_str())];
    run_receiver(
        Path::new(&node),
        &["receiver.js"],
        &files,
        &case_json(&cases),
        cases.len(),
    );
}

#[tokio::test]
async fn the_verification_page_python_code_verifies_real_deliveries() {
    // The Ed25519 block needs `cryptography`: the interop tests' venv has it.
    let Some(python) = std::env::var_os("HOOKSIGN_INTEROP_PYTHON") else {
        return skip_or_fail("HOOKSIGN_INTEROP_PYTHON is not set (a Python with `cryptography`)");
    };
    let code = verified_blocks(&page("verifying.md"), "python") + PYTHON_HARNESS;
    let cases = delivered_cases().await;
    let files = [("receiver.py", code.as_str())];
    run_receiver(
        Path::new(&python),
        &["receiver.py"],
        &files,
        &case_json(&cases),
        cases.len(),
    );
}

/// The Java harness reads [`case_lines`]; it goes before the page's class (the source launcher
/// runs the first class of the file).
const JAVA_HARNESS: &str = r#"
final class Harness {
    public static void main(String[] args) throws Exception {
        java.io.BufferedReader in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));
        java.util.Base64.Decoder b64 = java.util.Base64.getDecoder();
        int failed = 0;
        for (String line; (line = in.readLine()) != null; ) {
            String[] f = line.split("\t", -1);
            byte[] body = b64.decode(f[3]);
            java.util.Map<String, String> headers = new java.util.HashMap<>();
            for (String pair : f[5].split(" ")) {
                String[] kv = pair.split("=", 2);
                headers.put(kv[0], new String(b64.decode(kv[1]), java.nio.charset.StandardCharsets.UTF_8));
            }
            boolean got;
            switch (f[1]) {
                case "storno": got = WebhookVerifier.verifyStorno(f[2], body, headers::get); break;
                case "github": got = WebhookVerifier.verifyGithub(f[2], body, headers::get); break;
                case "stripe": got = WebhookVerifier.verifyStripe(f[2], body, headers::get); break;
                case "standard-webhooks": got = WebhookVerifier.verifyStandardWebhooks(f[2], body, headers::get); break;
                default: throw new IllegalArgumentException(f[1]);
            }
            boolean ok = got == Boolean.parseBoolean(f[4]);
            if (!ok) failed++;
            System.out.println((ok ? "ok " : "FAIL ") + f[0] + " (got " + got + ")");
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}

"#;

/// The Java class is not run by CI (no JDK there), but wherever `java` is on PATH it must judge
/// real deliveries right too.
#[tokio::test]
async fn the_verification_page_java_code_verifies_real_deliveries_where_java_is_installed() {
    if skip_unless_on_path("java") {
        return;
    }
    let text = page("verifying.md");
    let code = fenced_block(&text, "java");
    let class = code.find("public final class").expect("the class");
    let source = format!("{}{JAVA_HARNESS}{}", &code[..class], &code[class..]);
    let cases = hmac_cases().await;
    let files = [("Receiver.java", source.as_str())];
    run_receiver(
        Path::new("java"),
        &["Receiver.java"],
        &files,
        &case_lines(&cases),
        cases.len(),
    );
}

/// The Go harness reads [`case_lines`]: a `main` package of its own file, beside the page's
/// code with its `package` line made `main`. Headers go in through `http.Header.Add`, which
/// canonicalises the lowercase names as `net/http` does.
const GO_HARNESS: &str = r#"package main

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"
)

func decode(text string) []byte {
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		panic(err)
	}
	return raw
}

func main() {
	verifiers := map[string]func(string, []byte, http.Header) bool{
		"storno": VerifyStorno,
		"github": VerifyGithub,
		"stripe": func(key string, body []byte, h http.Header) bool {
			return VerifyStripe(key, body, h, 5*time.Minute)
		},
		"standard-webhooks": func(key string, body []byte, h http.Header) bool {
			return VerifyStandardWebhooks(key, body, h, 5*time.Minute)
		},
	}
	failed := 0
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 1<<20)
	for in.Scan() {
		f := strings.Split(in.Text(), "\t")
		h := http.Header{}
		for _, pair := range strings.Split(f[5], " ") {
			name, value, _ := strings.Cut(pair, "=")
			h.Add(name, string(decode(value)))
		}
		verify, known := verifiers[f[1]]
		if !known {
			panic(f[1])
		}
		got := verify(f[2], decode(f[3]), h)
		ok := got == (f[4] == "true")
		status := "ok"
		if !ok {
			failed++
			status = "FAIL"
		}
		fmt.Printf("%s %s (got %v)\n", status, f[0], got)
	}
	if in.Err() != nil {
		panic(in.Err())
	}
	if failed > 0 {
		os.Exit(1)
	}
}
"#;

/// Not run by CI (no Go there); wherever `go` is on PATH the page's Go code must judge real
/// deliveries right.
#[tokio::test]
async fn the_verification_page_go_code_verifies_real_deliveries_where_go_is_installed() {
    if skip_unless_on_path("go") {
        return;
    }
    let text = page("verifying.md");
    let code = fenced_block(&text, "go");
    let code = code
        .strip_prefix("package webhooks\n")
        .expect("the Go block starts with `package webhooks`");
    let code = format!("package main\n{code}");
    let cases = hmac_cases().await;
    let files = [("webhooks.go", code.as_str()), ("main.go", GO_HARNESS)];
    run_receiver(
        Path::new("go"),
        &["run", "webhooks.go", "main.go"],
        &files,
        &case_lines(&cases),
        cases.len(),
    );
}

/// The Ruby harness reads [`case_lines`], after the page's module. The body is a binary
/// (ASCII-8BIT) string, as Rack's `request.body.read` gives it.
const RUBY_HARNESS: &str = r##"
verifiers = {
  "storno" => Webhooks.method(:verify_storno),
  "github" => Webhooks.method(:verify_github),
  "stripe" => Webhooks.method(:verify_stripe),
  "standard-webhooks" => Webhooks.method(:verify_standard_webhooks),
}
failed = 0
$stdin.each_line(chomp: true) do |line|
  name, scheme, key, body, expect, pairs = line.split("\t", -1)
  headers = pairs.split(" ").to_h do |pair|
    header, value = pair.split("=", 2)
    [header, value.unpack1("m0").force_encoding(Encoding::UTF_8)]
  end
  got = verifiers.fetch(scheme).call(key, body.unpack1("m0"), headers)
  ok = got == (expect == "true")
  failed += 1 unless ok
  puts "#{ok ? "ok" : "FAIL"} #{name} (got #{got.inspect})"
end
exit(failed.zero? ? 0 : 1)
"##;

/// Not run by CI (no Ruby there); wherever `ruby` is on PATH the page's Ruby code must judge
/// real deliveries right.
#[tokio::test]
async fn the_verification_page_ruby_code_verifies_real_deliveries_where_ruby_is_installed() {
    if skip_unless_on_path("ruby") {
        return;
    }
    let code = fenced_block(&page("verifying.md"), "ruby").to_owned() + RUBY_HARNESS;
    let cases = hmac_cases().await;
    let files = [("receiver.rb", code.as_str())];
    run_receiver(
        Path::new("ruby"),
        &["receiver.rb"],
        &files,
        &case_lines(&cases),
        cases.len(),
    );
}

/// The PHP harness reads [`case_lines`], after the page's functions (the block opens `<?php`
/// and never closes it).
const PHP_HARNESS: &str = r#"
$verifiers = [
    'storno' => 'verify_storno',
    'github' => 'verify_github',
    'stripe' => 'verify_stripe',
    'standard-webhooks' => 'verify_standard_webhooks',
];
$failed = 0;
while (($line = fgets(STDIN)) !== false) {
    [$name, $scheme, $key, $body, $expect, $pairs] = explode("\t", rtrim($line, "\n"));
    $headers = [];
    foreach (explode(' ', $pairs) as $pair) {
        [$header, $value] = explode('=', $pair, 2);
        $headers[$header] = base64_decode($value, true);
    }
    $got = $verifiers[$scheme]($key, base64_decode($body, true), $headers);
    $ok = $got === ($expect === 'true');
    $failed += $ok ? 0 : 1;
    printf("%s %s (got %s)\n", $ok ? 'ok' : 'FAIL', $name, var_export($got, true));
}
exit($failed ? 1 : 0);
"#;

/// Not run by CI (no PHP there); wherever `php` is on PATH the page's PHP code must judge real
/// deliveries right.
#[tokio::test]
async fn the_verification_page_php_code_verifies_real_deliveries_where_php_is_installed() {
    if skip_unless_on_path("php") {
        return;
    }
    let code = fenced_block(&page("verifying.md"), "php").to_owned() + PHP_HARNESS;
    let cases = hmac_cases().await;
    let files = [("receiver.php", code.as_str())];
    run_receiver(
        Path::new("php"),
        &["receiver.php"],
        &files,
        &case_lines(&cases),
        cases.len(),
    );
}

// === links ===

/// mdBook's anchor for a heading: its text without markup, lowercased, spaces to `-`, other
/// punctuation dropped, repeated ones numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let plain = strip_links(title);
        let id: String = plain
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '_' || c == '-' {
                    Some(c.to_ascii_lowercase())
                } else if c.is_whitespace() {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let count = seen.entry(id.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            id.clone()
        } else {
            format!("{id}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// `[text](target)` becomes `text`.
fn strip_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("](") {
        out.push_str(&rest[..open].replacen('[', "", 1));
        let after = &rest[open + 2..];
        rest = after.find(')').map_or("", |close| &after[close + 1..]);
    }
    out.push_str(rest);
    out
}

/// Every `](target)` of `text` outside code, with its line number.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let outside: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        for part in outside.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                found.push((index + 1, part[..end].to_owned()));
            }
        }
    }
    found
}

/// The broken relative links (and anchors) of the pages in `pages`: each as `file:line: why`.
/// A page listed in SUMMARY.md but absent is one mdBook creates at build time: a link to it is
/// fine, an anchor in it is not known.
fn broken_links(root: &Path, pages: &[PathBuf], summary_only: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut broken = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(page).unwrap();
        let dir = page.parent().unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let at = format!(
                "{}:{line}: {target}",
                page.strip_prefix(root).unwrap_or(page).display()
            );
            if !path.exists() {
                if summary_only.contains(&path) && anchor.is_none() {
                    continue;
                }
                broken.push(format!("{at}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                if path.extension().is_some_and(|e| e == "md") {
                    let known = anchors(&std::fs::read_to_string(&path).unwrap());
                    if !known.contains(anchor) {
                        broken.push(format!("{at}: no heading has the anchor #{anchor}"));
                    }
                }
            }
        }
    }
    broken
}

fn book_pages(src: &Path) -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The pages SUMMARY.md lists that are not in `src` (mdBook creates them empty at build time).
fn summary_only(src: &Path) -> BTreeSet<PathBuf> {
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).unwrap();
    links(&summary)
        .into_iter()
        .map(|(_, target)| src.join(target))
        .filter(|path| !path.exists())
        .collect()
}

#[test]
fn every_relative_link_and_anchor_of_the_book_and_readme_resolves() {
    let root = Path::new(ROOT);
    let src = root.join("docs/src");
    let mut pages = book_pages(&src);
    assert!(pages.len() >= 12, "{pages:?}");
    pages.push(root.join("README.md"));
    let broken = broken_links(root, &pages, &summary_only(&src));
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // Every page of the book is in SUMMARY.md, so none is unreachable.
    let summary = page("SUMMARY.md");
    for page in book_pages(&src) {
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            name == "SUMMARY.md" || summary.contains(&format!("]({name})")),
            "{name} is not in SUMMARY.md"
        );
    }
}

#[test]
fn the_link_check_finds_a_broken_file_and_a_broken_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("SUMMARY.md"), "- [A](a.md)\n- [Later](later.md)\n").unwrap();
    std::fs::write(
        src.join("a.md"),
        "# A\n\n## The `[proxy]` part\n\nSee [here](#the-proxy-part), [b](b.md), \
         [bad](#nothing), [later](later.md), [later's](later.md#x), `[not](a link)`.\n\
         ```\n[inside](code.md)\n```\n",
    )
    .unwrap();
    std::fs::write(src.join("b.md"), "# B\n[back](a.md#a)\n").unwrap();
    let broken = broken_links(src, &book_pages(src), &summary_only(src));
    assert_eq!(
        broken,
        [
            "a.md:5: #nothing: no heading has the anchor #nothing".to_owned(),
            "a.md:5: later.md#x: no such file".to_owned(),
        ],
        "{broken:?}"
    );
}
