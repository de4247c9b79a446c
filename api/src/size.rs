//! Byte sizes as people write them (`512MiB`, `10GiB`, `1G`) and the disk cache's size rules,
//! shared by `mirrorfs mount --cache-size` and `mirrorfs csi --cache-size` so both accept
//! exactly the same values.

/// The disk cache's default size limit (per mount): 10 GiB.
pub const DEFAULT_CACHE_SIZE: u64 = 10 << 30;

/// Smallest disk cache size accepted: a few 4 MiB blocks.
pub const MIN_CACHE_SIZE: u64 = 16 << 20;

/// A size in bytes: a number with an optional unit (B; K, M, G, T and KiB…TiB in powers of
/// 1024; KB, MB, GB, TB in powers of 1000), case-insensitive, e.g. `512MiB`, `10GiB`, `1G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let bad = || {
        format!("{s:?} is not a size: use bytes or a number with a unit, e.g. 512MiB, 10GiB, 1G")
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2 TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        for bad in ["", "GiB", "10 parsecs", "-1G", "1..2M", "1e9"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("not a size"), "{e}");
        }
    }
}
