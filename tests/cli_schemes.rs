//! `hooksign sign` and `verify` with `--scheme`, run as the real binary.

mod support;

use support::run_binary;

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[test]
fn standard_webhooks_sign_prints_the_spec_vector_and_verify_takes_several_entries() {
    let common = ["--scheme", "standard-webhooks", "--secret", SPEC_SECRET];
    let message = [
        "--id",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "--timestamp",
        "1614265330",
    ];
    let args: Vec<&str> = ["sign"]
        .iter()
        .chain(&common)
        .chain(&message)
        .copied()
        .collect();
    let (code, stdout, _) = run_binary(&args, Some(SPEC_BODY));
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("webhook-signature: {SPEC_SIG}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains("webhook-timestamp: 1614265330\n"),
        "{stdout}"
    );

    let two = format!("v1,AAAA {SPEC_SIG}");
    for (signature, want) in [(two.as_str(), 0), ("v1,AAAA", 1)] {
        let args: Vec<&str> = ["verify", "--signature", signature]
            .iter()
            .chain(&common)
            .chain(&message)
            .copied()
            .collect();
        assert_eq!(run_binary(&args, Some(SPEC_BODY)).0, want, "{signature}");
    }
    // The id and timestamp are part of the signed string: verify cannot guess them.
    let (code, _, stderr) = run_binary(
        &[
            "verify",
            "--signature",
            SPEC_SIG,
            "--scheme",
            "standard-webhooks",
            "--secret",
            SPEC_SECRET,
        ],
        Some(SPEC_BODY),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--id and --timestamp"), "{stderr}");
}

#[test]
fn stripe_github_and_ed25519_round_trip() {
    let hex_secret = format!("whsec_{}", "5a".repeat(32));
    for scheme in ["stripe", "github", "storno"] {
        let (code, stdout, _) = run_binary(
            &["sign", "--scheme", scheme, "--secret", &hex_secret],
            Some(b"{}"),
        );
        assert_eq!(code, 0);
        let signature = stdout.trim().rsplit(": ").next().unwrap().to_owned();
        let verify = |body: &[u8]| {
            run_binary(
                &[
                    "verify",
                    "--scheme",
                    scheme,
                    "--secret",
                    &hex_secret,
                    "--signature",
                    &signature,
                ],
                Some(body),
            )
            .0
        };
        assert_eq!(verify(b"{}"), 0, "{scheme}: {signature}");
        assert_eq!(verify(b"{ }"), 1, "{scheme}");
    }

    let seed = format!("whsk_{}", "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=");
    let (code, stdout, _) = run_binary(
        &[
            "sign",
            "--scheme",
            "standard-webhooks-ed25519",
            "--secret",
            &seed,
            "--id",
            "msg_1",
            "--timestamp",
            "10",
        ],
        Some(b"{}"),
    );
    assert_eq!(code, 0);
    let signature = stdout
        .lines()
        .last()
        .unwrap()
        .strip_prefix("webhook-signature: ")
        .unwrap();
    assert!(signature.starts_with("v1a,"), "{signature}");
    // Verification with the private key's public half and with a wrong timestamp.
    for (timestamp, want) in [("10", 0), ("11", 1)] {
        let (code, _, stderr) = run_binary(
            &[
                "verify",
                "--scheme",
                "standard-webhooks-ed25519",
                "--secret",
                &seed,
                "--id",
                "msg_1",
                "--timestamp",
                timestamp,
                "--signature",
                signature,
            ],
            Some(b"{}"),
        );
        assert_eq!(code, want, "{stderr}");
    }
}
