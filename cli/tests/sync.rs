//! `mirrorfs sync SRC DST` as an operator runs it between two local buckets: a first copy, a
//! second run that copies nothing, `--check` replacing a damaged object, `--dry-run` writing
//! nothing, and clear errors for a bad URL or a missing source directory.

mod common;

use std::path::Path;

use common::{fails_with, mirrorfs, text};

fn write(root: &Path, key: &str, bytes: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn same(a: &Path, b: &Path, key: &str) -> bool {
    std::fs::read(a.join(key)).expect("read source")
        == std::fs::read(b.join(key)).ok().unwrap_or_default()
}

fn sync(args: &[&str]) -> String {
    let o = mirrorfs(&[&["sync", "--progress", "none"], args].concat(), &[]);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

#[test]
fn sync_copies_what_is_missing_checks_and_dry_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    let keys = ["v1/ab/one", "v1/cd/two", "v2/ef/three"];
    for (i, k) in keys.iter().enumerate() {
        write(&src, k, &vec![i as u8 + 1; 10_000 * (i + 1)]);
    }
    let (s, d) = (src.to_str().expect("utf-8"), dst.to_str().expect("utf-8"));
    let dst_url = format!("file://{d}");

    let out = sync(&[s, &dst_url]);
    assert!(out.contains("copied 3"), "{out}");
    for k in keys {
        assert_eq!(
            std::fs::read(src.join(k)).unwrap(),
            std::fs::read(dst.join(k)).unwrap()
        );
    }

    // Only what is missing: nothing the second time.
    let out = sync(&[s, d]);
    assert!(
        out.contains("copied 0") && out.contains("skipped 3"),
        "{out}"
    );

    // A copy of another size is replaced; one of the same size with other bytes is found only
    // with --check.
    write(&dst, keys[0], b"short");
    let out = sync(&[s, d]);
    assert!(out.contains("replaced 1"), "{out}");
    assert!(
        same(&src, &dst, keys[0]),
        "a copy of the wrong size was kept"
    );
    let damaged = vec![0xEE; 20_000];
    write(&dst, keys[1], &damaged);
    let out = sync(&[s, d]);
    assert!(
        out.contains("copied 0") && out.contains("replaced 0"),
        "{out}"
    );
    assert!(std::fs::read(dst.join(keys[1])).unwrap() == damaged);
    let out = sync(&["--check", s, d]);
    assert!(out.contains("replaced 1"), "{out}");
    assert!(same(&src, &dst, keys[1]), "--check left a damaged copy");

    // --under limits the copy to one key directory; --dry-run writes nothing.
    write(&src, "v1/new", b"new");
    write(&src, "v2/new", b"new");
    let out = sync(&["--dry-run", s, d]);
    assert!(out.contains("would copy 2 objects"), "{out}");
    assert!(!dst.join("v1/new").exists() && !dst.join("v2/new").exists());
    let out = sync(&["--under", "v2", s, d]);
    assert!(out.contains("copied 1"), "{out}");
    assert!(dst.join("v2/new").exists() && !dst.join("v1/new").exists());
}

#[test]
fn sync_refuses_bad_urls_and_a_missing_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    fails_with(
        &["sync", "ftp://host/x", d],
        &[],
        "scheme \"ftp\" is not supported",
    );
    let missing = dir.path().join("no-such-dir");
    fails_with(
        &["sync", missing.to_str().expect("utf-8"), d],
        &[],
        "does not exist",
    );
    fails_with(&["sync", d, "file://relative"], &[], "destination bucket");
}
