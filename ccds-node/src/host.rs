//! Facts about the host the node runs on, reported to the CM for the node's history.

/// Where Linux keeps the boot time.
const PROC_STAT: &str = "/proc/stat";

/// When the host booted, in Unix seconds, from the `btime` line of a `/proc/stat` text.
pub fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("btime"))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// When the host booted, in Unix seconds; 0 when unknown (not Linux, or `/proc` unreadable).
pub fn boot_time() -> u64 {
    std::fs::read_to_string(PROC_STAT)
        .ok()
        .and_then(|text| parse_btime(&text))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btime_is_read_from_proc_stat() {
        let sample = "cpu  1219925 0 90357 774474 12003 0 2768 6045 0 0\n\
                      cpu0 600835 0 42265 401519 3873 0 1217 3050 0 0\n\
                      intr 8591519 0 0 0\n\
                      ctxt 11315676\n\
                      btime 1795608847\n\
                      processes 52113\n";
        assert_eq!(parse_btime(sample), Some(1_795_608_847));
        assert_eq!(parse_btime("cpu 1 2 3\nctxt 5\n"), None);
        assert_eq!(parse_btime("btime soon\n"), None);
        assert_eq!(parse_btime("btimex 12\n"), None);
        assert_eq!(parse_btime(""), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_host_booted_in_the_past() {
        let booted = boot_time();
        assert!(
            booted > 0 && booted <= overlay::time::now_secs(),
            "{booted}"
        );
    }
}
