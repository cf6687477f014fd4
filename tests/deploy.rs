//! The deployment files: `omnistrate-compose.yaml` passes the predecessor's variables and
//! meterbook's configuration check (`doctor`) accepts exactly what it passes, blanks included.
//! (The image itself is built and run by `scripts/test-container`.)

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml_ng::Value;

use crate::emulator::{CLIENT_ID, SECRET};
use crate::util::TestEnv;

/// Every variable the predecessor's newest compose file passes, with its API parameter.
const PREDECESSOR_ENVIRONMENT: [(&str, &str); 19] = [
    ("SERVICE_NAME", "serviceName"),
    ("ENVIRONMENT_TYPE", "environmentType"),
    ("PLAN_ID", "planId"),
    ("CLAZAR_CLIENT_ID", "clazarClientId"),
    ("CLAZAR_CLIENT_SECRET", "clazarClientSecret"),
    ("CLAZAR_CLOUD", "clazarCloud"),
    ("AWS_S3_BUCKET_NAME", "awsS3BucketName"),
    ("AWS_REGION", "awsRegion"),
    ("AWS_ACCESS_KEY_ID", "awsAccessKeyId"),
    ("AWS_SECRET_ACCESS_KEY", "awsSecretAccessKey"),
    ("DIMENSION1_NAME", "dimension1Name"),
    ("DIMENSION1_FORMULA", "dimension1Formula"),
    ("DIMENSION2_NAME", "dimension2Name"),
    ("DIMENSION2_FORMULA", "dimension2Formula"),
    ("DIMENSION3_NAME", "dimension3Name"),
    ("DIMENSION3_FORMULA", "dimension3Formula"),
    ("START_MONTH", "startMonth"),
    ("DRY_RUN", "dryRun"),
    ("LOG_LEVEL", "logLevel"),
];

struct Compose {
    /// Variable name to API parameter key (`$var.KEY`).
    environment: BTreeMap<String, String>,
    /// API parameter key to (required, default value).
    params: BTreeMap<String, (bool, Option<String>)>,
}

fn compose() -> Compose {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("omnistrate-compose.yaml");
    let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let service = &doc["services"]["metering-processor"];
    let environment = service["environment"]
        .as_mapping()
        .expect("an environment mapping")
        .iter()
        .map(|(name, value)| {
            let value = value.as_str().expect("a $var reference");
            let key = value
                .strip_prefix("$var.")
                .unwrap_or_else(|| panic!("{value} is not a $var reference"));
            (name.as_str().unwrap().to_string(), key.to_string())
        })
        .collect();
    let params = service["x-omnistrate-api-params"]
        .as_sequence()
        .expect("a list of API parameters")
        .iter()
        .map(|p| {
            let default = match &p["defaultValue"] {
                Value::Null => None,
                v => Some(v.as_str().expect("a string default").to_string()),
            };
            (
                p["key"].as_str().unwrap().to_string(),
                (p["required"].as_bool().unwrap_or(false), default),
            )
        })
        .collect();
    Compose {
        environment,
        params,
    }
}

#[test]
fn the_compose_file_passes_every_variable_of_the_predecessor_and_each_names_a_parameter() {
    let c = compose();
    for (name, key) in PREDECESSOR_ENVIRONMENT {
        assert_eq!(
            c.environment.get(name).map(String::as_str),
            Some(key),
            "{name}"
        );
    }
    for (name, key) in &c.environment {
        assert!(c.params.contains_key(key), "{name}: no API parameter {key}");
    }
    for own in [
        "METERBOOK_STATE_URL",
        "METERBOOK_ROUNDING",
        "METERBOOK_PERIOD",
    ] {
        let key = &c.environment[own];
        assert!(!c.params[key].0, "{own} is optional");
    }
    for secret in ["clazarClientSecret", "awsSecretAccessKey"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("omnistrate-compose.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let entry = &text[text.find(&format!("key: {secret}")).unwrap()..];
        let entry = &entry[..entry.find("- key:").unwrap_or(entry.len())];
        assert!(entry.contains("type: Password"), "{secret}:\n{entry}");
    }
}

#[test]
fn the_configuration_check_accepts_exactly_what_the_compose_file_passes() {
    let c = compose();
    let env = TestEnv::new().with_bucket("compose").with_emulator(&[]);
    env.generate(&["--subscriptions", "1", "--month", "2025-06"]);
    env.bucket().upload(&env.export(), "");
    // What an operator fills in; every optional parameter left blank (Omnistrate then passes an
    // empty string) or at its default.
    let filled: BTreeMap<&str, String> = BTreeMap::from([
        ("serviceName", "pg".to_string()),
        ("environmentType", "PROD".to_string()),
        ("planId", "pt-HJSv20iWX0".to_string()),
        ("clazarClientId", CLIENT_ID.to_string()),
        ("clazarClientSecret", SECRET.to_string()),
        ("clazarCloud", "aws".to_string()),
        ("awsAccessKeyId", "testing".to_string()),
        ("awsSecretAccessKey", "testing".to_string()),
        ("awsS3BucketName", env.bucket().name.clone()),
        ("dimension1Name", "cpu".to_string()),
        ("dimension1Formula", "cpu_core_hours // 2".to_string()),
    ]);
    // Only where the servers are (the S3 endpoint and Clazar's base URL, set by the test
    // environment) differs from a real deployment.
    let mut cmd = env
        .meterbook(["doctor"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_REGION");
    let mut blank = Vec::new();
    for (name, key) in &c.environment {
        let (required, default) = &c.params[key];
        let value = match (filled.get(key.as_str()), default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                assert!(
                    !required,
                    "{key} is required but the test fills in no value"
                );
                blank.push(name.clone());
                String::new()
            }
        };
        cmd = cmd.env(name, value);
    }
    assert!(
        blank.contains(&"DIMENSION2_NAME".to_string())
            && blank.contains(&"METERBOOK_STATE_URL".to_string()),
        "{blank:?}"
    );
    let out = cmd.expect_code(0);
    let text = &out.stdout;
    assert!(text.contains("formulas: 1 valid: cpu"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(
        text.contains(&format!(
            "s3://{}/meterbook/state/pg/PROD/pt-HJSv20iWX0/",
            env.bucket().name
        )),
        "the state is the plan's own:\n{text}"
    );
    assert!(!text.contains(SECRET) && !out.stderr.contains(SECRET));
}
