//! SLURM's compressed host lists (`gpu[01-04,07]`, `node-[1,3-5],login1`,
//! `rack[1-2]-n[01-02]`): expansion in SLURM's order, so the first host is
//! the one every rank agrees to call the master.

use super::DistError;

/// Hosts a list may expand to before it is refused (a typo such as
/// `n[1-99999999]` must not allocate gigabytes).
const MAX_HOSTS: usize = 1 << 20;

/// The first host of `list` (cheap: expands only the first entry).
pub fn first_host(list: &str) -> Result<String, DistError> {
    let entries = split_top_level(list)?;
    let first = entries
        .first()
        .ok_or_else(|| bad(list, "the host list is empty"))?;
    let hosts = expand_entry(list, first)?;
    // An entry always expands to at least one host (ranges are non-empty).
    Ok(hosts.into_iter().next().unwrap_or_default())
}

/// Every host of `list`, in order.
pub fn expand(list: &str) -> Result<Vec<String>, DistError> {
    let mut out = Vec::new();
    for entry in split_top_level(list)? {
        out.extend(expand_entry(list, entry)?);
        if out.len() > MAX_HOSTS {
            return Err(bad(list, &format!("more than {MAX_HOSTS} hosts")));
        }
    }
    Ok(out)
}

fn bad(list: &str, why: &str) -> DistError {
    DistError::NodeList {
        list: list.to_string(),
        why: why.to_string(),
    }
}

/// Splits at the commas outside brackets; checks bracket nesting.
fn split_top_level(list: &str) -> Result<Vec<&str>, DistError> {
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(bad(list, "nested '['")),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(bad(list, "']' without '['")),
            ',' if depth == 0 => {
                entries.push(&list[start..i]);
                start = i + 1;
            }
            c if c.is_whitespace() => return Err(bad(list, "whitespace in the host list")),
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(list, "'[' without ']'"));
    }
    entries.push(&list[start..]);
    if entries.iter().any(|e| e.is_empty()) {
        return Err(bad(list, "an empty host name"));
    }
    Ok(entries)
}

/// One entry: literal text and bracket groups, expanded as a product with
/// the last group varying fastest (SLURM's order).
fn expand_entry(list: &str, entry: &str) -> Result<Vec<String>, DistError> {
    let mut hosts = vec![String::new()];
    let mut rest = entry;
    while !rest.is_empty() {
        if let Some(body) = rest.strip_prefix('[') {
            let end = body.find(']').ok_or_else(|| bad(list, "'[' without ']'"))?;
            let values = expand_group(list, &body[..end])?;
            if hosts.len().saturating_mul(values.len()) > MAX_HOSTS {
                return Err(bad(list, &format!("more than {MAX_HOSTS} hosts")));
            }
            hosts = hosts
                .iter()
                .flat_map(|h| values.iter().map(move |v| format!("{h}{v}")))
                .collect();
            rest = &body[end + 1..];
        } else {
            let end = rest.find('[').unwrap_or(rest.len());
            for h in &mut hosts {
                h.push_str(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    Ok(hosts)
}

/// `01-04,07` → `01 02 03 04 07`; a range keeps its lower bound's width.
fn expand_group(list: &str, group: &str) -> Result<Vec<String>, DistError> {
    let mut values = Vec::new();
    for item in group.split(',') {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match item.split_once('-') {
            None if digits(item) => values.push(item.to_string()),
            Some((lo, hi)) if digits(lo) && digits(hi) => {
                let parse = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| bad(list, &format!("number {s} is too large")))
                };
                let (a, b) = (parse(lo)?, parse(hi)?);
                if a > b {
                    return Err(bad(list, &format!("range {item} runs backwards")));
                }
                if b - a >= MAX_HOSTS as u64 {
                    return Err(bad(list, &format!("range {item} has too many hosts")));
                }
                let width = lo.len();
                values.extend((a..=b).map(|v| format!("{v:0width$}")));
            }
            _ => {
                return Err(bad(
                    list,
                    &format!("'{item}' in brackets is not a number or a range a-b"),
                ));
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_of_common_lists() {
        for (list, first) in [
            ("gpu[01-04,07]", "gpu01"),
            ("node-[1,3-5],login1", "node-1"),
            ("login1,node-[1,3-5]", "login1"),
            ("single", "single"),
            ("a.example.org,b", "a.example.org"),
            ("gpu[07,01-04]", "gpu07"),
            ("rack[2-3]-n[09-10]", "rack2-n09"),
            ("n[5]", "n5"),
            ("n[001-100]x", "n001x"),
        ] {
            assert_eq!(first_host(list).unwrap(), first, "{list}");
        }
    }

    #[test]
    fn expansion_keeps_order_and_padding() {
        assert_eq!(
            expand("gpu[01-04,07]").unwrap(),
            ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]
        );
        assert_eq!(
            expand("node-[1,3-5],login1").unwrap(),
            ["node-1", "node-3", "node-4", "node-5", "login1"]
        );
        assert_eq!(
            expand("r[1-2]-n[08-10]").unwrap(),
            ["r1-n08", "r1-n09", "r1-n10", "r2-n08", "r2-n09", "r2-n10"]
        );
        // Padding follows the lower bound, as SLURM does; 9-10 has none.
        assert_eq!(expand("n[9-10]").unwrap(), ["n9", "n10"]);
        assert_eq!(
            expand("n[098-101]").unwrap(),
            ["n098", "n099", "n100", "n101"]
        );
    }

    #[test]
    fn malformed_lists_are_errors_naming_the_list() {
        for (list, why) in [
            ("", "empty"),
            ("gpu[01-04", "without ']'"),
            ("gpu01-04]", "without '['"),
            ("gpu[[1]]", "nested"),
            ("gpu[04-01]", "backwards"),
            ("gpu[a-b]", "not a number"),
            ("gpu[1,]", "not a number"),
            ("gpu[]", "not a number"),
            ("a,,b", "empty host"),
            ("a, b", "whitespace"),
            ("n[1-99999999]", "too many"),
            ("n[1-1000][1-1000][1-1000]", "more than"),
            ("n[1-99999999999999999999]", "too large"),
        ] {
            let e = expand(list).unwrap_err().to_string();
            assert!(e.contains(why), "{list}: {e}");
            assert!(e.contains(&format!("'{list}'")), "{list}: {e}");
        }
        // first_host checks the syntax of the whole list too.
        assert!(first_host("a,b[").is_err());
    }
}
