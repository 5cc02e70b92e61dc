//! Every fixture under `tests/config/valid` loads, and every one under `tests/config/invalid`
//! fails with an error naming the key its `# expect-error-key:` comment says. The command line
//! (`--check-config`) is checked against the same files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use natsgate::config::Config;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "fixtures in {}", dir.display());
    files
}

fn expectation(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("# {key}: "))
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn valid_fixtures_load_with_the_expected_window() {
    for path in fixtures("valid") {
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ms: u64 = expectation(&path, "expect-auth-timeout-ms")
            .unwrap_or_else(|| panic!("{} lacks expect-auth-timeout-ms", path.display()))
            .parse()
            .unwrap();
        assert_eq!(
            config.auth_timeout,
            Duration::from_millis(ms),
            "{}",
            path.display()
        );
        match expectation(&path, "expect-warning") {
            Some(w) => assert!(
                config.warnings.iter().any(|x| x.contains(&w)),
                "{}: warnings {:?}",
                path.display(),
                config.warnings
            ),
            None => assert!(
                config.warnings.is_empty(),
                "{}: {:?}",
                path.display(),
                config.warnings
            ),
        }
    }
}

#[test]
fn invalid_fixtures_name_the_key() {
    for path in fixtures("invalid") {
        let key = expectation(&path, "expect-error-key")
            .unwrap_or_else(|| panic!("{} lacks expect-error-key", path.display()));
        let err = Config::load(&path).expect_err(&path.display().to_string());
        assert_eq!(err.key, key, "{}: {err}", path.display());
        let text = err.to_string();
        assert!(
            text.starts_with(&path.display().to_string()),
            "names the file: {text}"
        );
    }
}

/// `natsgate --check-config --config <path>`.
fn check_config(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_natsgate"))
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_config_cli_agrees() {
    let bin = env!("CARGO_BIN_EXE_natsgate");
    for path in fixtures("valid") {
        let out = check_config(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout} {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("authorization.timeout = "), "{stdout}");
        assert!(
            stdout.contains("nats-server starts its own authorization timer"),
            "{stdout}"
        );
    }
    for path in fixtures("invalid") {
        let key = expectation(&path, "expect-error-key").unwrap();
        let out = check_config(&path);
        assert!(!out.status.success(), "{} must fail", path.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(": {key}: ")),
            "{}: {stderr}",
            path.display()
        );
    }
    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("natsgate "));
}

/// `--check-config` prints the effective configuration as TOML (warnings and notes are
/// comments): read back, it is the same configuration with the same window.
#[test]
fn check_config_prints_the_effective_configuration() {
    for path in fixtures("valid") {
        let out = check_config(&path);
        let printed = String::from_utf8(out.stdout).unwrap();
        let original = Config::load(&path).unwrap();
        let again = Config::parse(&printed, &path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{printed}", path.display()));
        assert_eq!(again.auth_timeout, original.auth_timeout, "{printed}");
        assert_eq!(
            toml::to_string(&again).unwrap(),
            toml::to_string(&original).unwrap(),
            "{}",
            path.display()
        );
        for w in &original.warnings {
            assert!(printed.contains(w.as_str()), "{printed}");
        }
    }
}

#[test]
fn shipped_proxy_toml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.warnings.is_empty());
    assert!(
        config.auth_timeout < Duration::from_secs(2),
        "below nats-server's default 2 s timer"
    );
}
