//! One test run as a whole test binary (`harness = false`), for tests that count the
//! process's heap with dhat.
//!
//! libtest runs each test on a thread it spawns and then, on its main thread, records the
//! test as running (a map entry and a timeout queue entry, about 900 bytes on the first
//! test). Those allocations race the test: dhat counted them inside a test's measured window
//! in 33 of 200 runs of `netstack`'s `flow_memory`. Without libtest nothing else allocates.

/// Runs `test` unless the command line names a filter that the test's name (its function's)
/// does not contain, and prints libtest's lines for it, so that `cargo test <filter>` and
/// the summary lines read as for any other test binary. A failing test panics, which fails
/// the binary.
pub fn run_alone<F: FnOnce()>(test: F) {
    let name = name_of::<F>();
    match choose(name, std::env::args().skip(1)) {
        Choice::List => println!("{name}: test"),
        Choice::FilteredOut => {
            println!("\nrunning 0 tests\n");
            println!(
                "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n"
            );
        }
        Choice::Run => {
            println!("\nrunning 1 test (alone: harness = false)");
            let started = std::time::Instant::now();
            test();
            println!("test {name} ... ok\n");
            println!(
                "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                 finished in {:.2}s\n",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// A function's own name, without its module path.
fn name_of<F>() -> &'static str {
    let path = std::any::type_name::<F>();
    path.rsplit("::").next().unwrap_or(path)
}

/// What libtest's command line asks of the one test.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    List,
    FilteredOut,
    Run,
}

fn choose(name: &str, mut args: impl Iterator<Item = String>) -> Choice {
    let (mut filters, mut skips, mut exact) = (Vec::new(), Vec::new(), false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => return Choice::List,
            "--exact" => exact = true,
            "--skip" => skips.extend(args.next()),
            // libtest's options that take their value as the next argument.
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" => {
                args.next();
            }
            _ if arg.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    let matches = |f: &String| {
        if exact {
            name == f
        } else {
            name.contains(f.as_str())
        }
    };
    if (filters.is_empty() || filters.iter().any(matches)) && !skips.iter().any(matches) {
        Choice::Run
    } else {
        Choice::FilteredOut
    }
}

#[cfg(test)]
mod tests {
    use super::{choose, name_of, Choice};

    fn flows_hold_little() {}

    #[test]
    fn a_test_is_named_by_its_function() {
        fn named<F: FnOnce()>(_: F) -> &'static str {
            name_of::<F>()
        }
        assert_eq!(named(flows_hold_little), "flows_hold_little");
    }

    fn choice(args: &[&str]) -> Choice {
        choose("flows_hold_little", args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn filters_select_as_libtests_do() {
        assert_eq!(choice(&[]), Choice::Run);
        assert_eq!(choice(&["hold"]), Choice::Run);
        assert_eq!(choice(&["other", "little"]), Choice::Run);
        assert_eq!(choice(&["other"]), Choice::FilteredOut);
        assert_eq!(choice(&["hold", "--exact"]), Choice::FilteredOut);
        assert_eq!(choice(&["--exact", "flows_hold_little"]), Choice::Run);
        assert_eq!(choice(&["--skip", "little"]), Choice::FilteredOut);
        assert_eq!(choice(&["--skip", "other", "flows"]), Choice::Run);
        assert_eq!(choice(&["--test-threads", "other"]), Choice::Run);
        assert_eq!(choice(&["--test-threads=1", "--nocapture"]), Choice::Run);
        assert_eq!(choice(&["--list", "other"]), Choice::List);
    }
}
