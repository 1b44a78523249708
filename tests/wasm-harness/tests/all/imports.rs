//! The component's shape: exactly two WASI imports, one export, the contract
//! version, and a clear message when the `.wasm` has not been built.

use crate::support::*;
use std::collections::BTreeSet;
use wasmtime::component::types::ComponentItem;

const ALLOWED_IMPORTS: [&str; 2] = [
    "wasi:clocks/monotonic-clock@0.2.12",
    "wasi:random/insecure-seed@0.2.12",
];
const EXPORT: &str = "contextforge:retry/retry-engine@0.5.0";

#[test]
fn test_imports_are_exactly_clock_and_seed() -> Result<()> {
    let (engine, component) = harness::engine_and_component()?;
    let imports: BTreeSet<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let expected: BTreeSet<String> = ALLOWED_IMPORTS.iter().map(|s| s.to_string()).collect();
    ensure!(
        imports == expected,
        "imports are {imports:?}, expected exactly {expected:?}"
    );
    Ok(())
}

#[test]
fn test_imported_interfaces_use_no_pollables() -> Result<()> {
    // The clock is read, never waited on: `subscribe-*` would drag in
    // `wasi:io/poll` and a host-side resource table.
    let (engine, component) = harness::engine_and_component()?;
    for (name, item) in component.component_type().imports(engine) {
        let ComponentItem::ComponentInstance(instance) = item.ty else {
            bail!("import {name} is not an instance");
        };
        let funcs: Vec<String> = instance
            .exports(engine)
            .map(|(f, _)| f.to_string())
            .collect();
        for f in &funcs {
            ensure!(
                !f.starts_with("subscribe-"),
                "{name} imports {f}; the engine must not wait on the clock"
            );
        }
    }
    Ok(())
}

#[test]
fn test_exports_only_the_retry_engine() -> Result<()> {
    let (engine, component) = harness::engine_and_component()?;
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    ensure!(
        exports == [EXPORT],
        "exports are {exports:?}, expected [{EXPORT}]"
    );
    Ok(())
}

#[test]
fn test_instantiates_with_only_the_allowed_imports() -> Result<()> {
    // `Harness::new` links nothing but the clock and the seed; any other
    // import would fail instantiation here.
    let mut h = Harness::new()?;
    ensure!(h.state_count()? == 0);
    ensure!(h.policy_count()? == 0);
    Ok(())
}

#[test]
fn test_contract_version_is_0_5_0() -> Result<()> {
    let mut h = Harness::new()?;
    let version = h.contract_version()?;
    ensure!(version == "0.5.0", "contract-version returned {version:?}");
    ensure!(version == harness::CONTRACT_VERSION);
    Ok(())
}

#[test]
fn test_missing_wasm_says_to_run_make_wasm() -> Result<()> {
    let missing = std::path::Path::new("/nonexistent/retry_engine.wasm");
    let Err(err) = harness::read_wasm_from(missing) else {
        bail!("reading {} succeeded", missing.display());
    };
    let msg = format!("{err:#}");
    ensure!(
        msg.contains("make wasm"),
        "message {msg:?} does not say `make wasm`"
    );
    ensure!(
        msg.contains("/nonexistent/retry_engine.wasm"),
        "message {msg:?} lacks the path"
    );
    Ok(())
}

#[test]
fn test_instances_do_not_share_state() -> Result<()> {
    let mut a = configured(json!({}))?;
    let mut b = configured(json!({}))?;
    ensure!(
        a.policy() == b.policy(),
        "one content, one id in every instance"
    );
    a.decide("tool", "r1", Signals::ERROR)?;
    ensure!(a.state_count()? == 1);
    ensure!(b.state_count()? == 0);
    ensure!(b.decide("tool", "r1", Signals::ERROR)?.retry_count == 1);
    Ok(())
}
