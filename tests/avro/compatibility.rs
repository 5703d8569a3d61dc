//! Schema evolution policy: every `schemas/*.avsc` must be BACKWARD compatible with its
//! previous committed version (consumers on the new schema read what the old one wrote), as
//! judged by the registry's own compatibility API, not by a re-implementation of the rules.

use crate::support::*;
use captain_bridge::avro::{RecordKind, SchemaRegistryClient};
use captain_bridge::metrics::Metrics;
use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("git {args:?} cannot run: {e} (the check needs git)"));
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn normalized(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("a schema file is JSON")
}

/// The latest version of `schemas/{file}` committed in `repo` that differs from `current` (the
/// schema the code uses: the working tree's, compiled in), with its commit; `None` for a file
/// with no earlier version.
fn previous_version(repo: &Path, file: &str, current: &str) -> Option<(String, String)> {
    let path = format!("schemas/{file}");
    let commits = git(repo, &["log", "--format=%H", "--", &path]);
    commits.lines().find_map(|rev| {
        // A commit that deleted the file has no version of it.
        let shown = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["show", &format!("{rev}:{path}")])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&shown.stdout).into_owned();
        (normalized(&text) != normalized(current)).then(|| (rev.to_owned(), text))
    })
}

async fn backward_compatible(
    client: &SchemaRegistryClient,
    url: &str,
    name: &str,
    previous: &str,
    next: &str,
) -> bool {
    let subject = unique(&format!("compat.{name}"));
    client.register(&subject, previous).await.unwrap();
    put_config(url, &subject, "BACKWARD").await;
    client.is_compatible(&subject, next).await.unwrap()
}

#[tokio::test]
async fn every_schema_is_backward_compatible_with_its_previous_committed_version() {
    assert_eq!(
        git(repo(), &["rev-parse", "--is-shallow-repository"]).trim(),
        "false",
        "this check compares schemas/ with its git history, which a shallow clone lacks: \
         run `git fetch --unshallow`"
    );
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let client = client(&settings(&url), &metrics);
    let mut checked = Vec::new();
    for kind in RecordKind::ALL {
        let current = kind.avsc();
        match previous_version(repo(), kind.file_name(), current) {
            Some((rev, previous)) => {
                assert!(
                    backward_compatible(&client, &url, kind.file_name(), &previous, current).await,
                    "schemas/{} is not BACKWARD compatible with its version in {rev}: readers \
                     on the new schema could not read records written with the old one (add a \
                     default to a new field, do not change a field's type or remove a symbol)",
                    kind.file_name()
                );
                checked.push(format!("{} against {}", kind.file_name(), &rev[..10]));
            }
            None => {
                // A single version so far: nothing to be compatible with, but the registry must
                // take it.
                client
                    .register(&unique(&format!("compat.{}", kind.file_name())), current)
                    .await
                    .unwrap();
                checked.push(format!("{} (no earlier version)", kind.file_name()));
            }
        }
    }
    eprintln!("BACKWARD compatibility: {}", checked.join(", "));
}

#[tokio::test]
async fn the_compatibility_check_fails_an_incompatible_change() {
    // The check above must be able to fail: a new field without a default is not BACKWARD.
    let url = registry_url();
    let metrics = Metrics::new().unwrap();
    let client = client(&settings(&url), &metrics);
    let current = RecordKind::LaunchRequest.avsc();
    let mut next: serde_json::Value = normalized(current);
    next["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "priority", "type": "int"}));
    assert!(!backward_compatible(&client, &url, "negative", current, &next.to_string()).await);
    let mut defaulted = normalized(current);
    defaulted["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "priority", "type": "int", "default": 0}));
    assert!(backward_compatible(&client, &url, "positive", current, &defaulted.to_string()).await);
}

#[test]
fn the_previous_version_is_the_last_committed_one_that_differs() {
    let dir = std::env::temp_dir().join(unique("compat-history"));
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    let commit = |text: &str, message: &str| {
        std::fs::write(dir.join("schemas/X.avsc"), text).unwrap();
        git(&dir, &["add", "schemas/X.avsc"]);
        git(
            &dir,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                message,
            ],
        );
    };
    git(&dir, &["init", "-q"]);
    let v1 = r#"{"type":"record","name":"X","fields":[]}"#;
    let v2 = r#"{"type":"record","name":"X","fields":[{"name":"a","type":"int","default":0}]}"#;
    commit(v1, "v1");
    assert_eq!(
        previous_version(&dir, "X.avsc", v1),
        None,
        "only one version"
    );
    commit(v2, "v2");
    // Committed: compared with the version before the last change.
    let (_, previous) = previous_version(&dir, "X.avsc", v2).unwrap();
    assert_eq!(previous, v1);
    // Changed in the working tree: compared with the committed one. Whitespace is no change.
    let v3 = r#"{"type":"record","name":"X","fields":[]}"#;
    assert_eq!(previous_version(&dir, "X.avsc", v3).unwrap().1, v2);
    let v2_reformatted = v2.replace(',', ", ");
    assert_eq!(
        previous_version(&dir, "X.avsc", &v2_reformatted).unwrap().1,
        v1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
