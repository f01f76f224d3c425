//! One evaluation on the calling thread: the thread's cached VM or interpreter for a
//! compiled revision, the three rules from one combined run.

use std::cell::RefCell;

use regorus::rvm::vm::RegoVM;
use regorus::{Engine, Value};

use super::messages::error_text;
use super::{COMBINED_PATH, EvalPath, Ready, Rule, Rvm, timer_config};

/// Per-thread evaluators, at most this many policy sets at once (the current one,
/// plus one being swapped out, plus tests that hold several engines).
const THREAD_CACHE: usize = 4;

thread_local! {
    static VMS: RefCell<Vec<(u64, RegoVM)>> = const { RefCell::new(Vec::new()) };
    static ENGINES: RefCell<Vec<(u64, Engine)>> = const { RefCell::new(Vec::new()) };
}

/// Evaluates rules for one input on one thread's cached evaluator.
pub(super) struct Evaluator<'a> {
    id: u64,
    ready: &'a Ready,
    path: EvalPath,
    input: Value,
    /// Values of deny, approval, allow from one combined VM run.
    combined: Option<[Value; 3]>,
}

impl<'a> Evaluator<'a> {
    pub(super) fn new(id: u64, ready: &'a Ready, path: EvalPath, input: Value) -> Self {
        Evaluator {
            id,
            ready,
            path,
            input,
            combined: None,
        }
    }

    pub(super) fn rule(&mut self, rule: Rule) -> Result<Value, String> {
        if !self.ready.defined[rule as usize] {
            return Ok(Value::Undefined);
        }
        if self.combined.is_none() {
            let out = match (self.path, &self.ready.rvm) {
                (EvalPath::Rvm, Some(rvm)) => self.run_rvm(rvm)?,
                _ => self.run_interpreter()?,
            };
            self.combined = Some(unwrap_combined(&out)?);
        }
        Ok(self
            .combined
            .as_ref()
            .map(|c| c[rule as usize].clone())
            .unwrap_or(Value::Undefined))
    }

    fn run_rvm(&self, rvm: &Rvm) -> Result<Value, String> {
        VMS.with(|cell| {
            let mut vms = cell.borrow_mut();
            let idx = match vms.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    let mut vm = RegoVM::new_with_policy(rvm.policy.clone());
                    vm.load_program(rvm.program.clone());
                    vm.set_data(self.ready.data.clone())
                        .map_err(|e| e.to_string())?;
                    vm.set_max_instructions(self.ready.options.max_instructions);
                    vm.set_strict_builtin_errors(false);
                    vm.set_execution_timer_config(Some(timer_config(&self.ready.options)));
                    if vms.len() >= THREAD_CACHE {
                        vms.remove(0);
                    }
                    vms.push((self.id, vm));
                    vms.len() - 1
                }
            };
            let vm = &mut vms[idx].1;
            vm.set_input(self.input.clone());
            let out = vm
                .execute_entry_point_by_name(COMBINED_PATH)
                .map_err(|e| e.to_string());
            // Do not keep the caller's input alive in the cached VM.
            vm.set_input(Value::Null);
            out
        })
    }

    /// The three rules in one interpreter run (helper rules computed once); an error
    /// in any of them is the run's error.
    fn run_interpreter(&self) -> Result<Value, String> {
        ENGINES.with(|cell| {
            let mut engines = cell.borrow_mut();
            let idx = match engines.iter().position(|(id, _)| *id == self.id) {
                Some(i) => i,
                None => {
                    if engines.len() >= THREAD_CACHE {
                        engines.remove(0);
                    }
                    engines.push((self.id, self.ready.engine.clone()));
                    engines.len() - 1
                }
            };
            let engine = &mut engines[idx].1;
            engine.set_input(self.input.clone());
            let out = engine
                .eval_rule(COMBINED_PATH.to_string())
                .map_err(|e| error_text(&e.to_string()));
            engine.set_input(Value::Null);
            out
        })
    }
}

/// Splits the combined VM result into the three rule values.
fn unwrap_combined(out: &Value) -> Result<[Value; 3], String> {
    let Value::Array(items) = out else {
        return Err("policy evaluation gave no result".to_string());
    };
    let v = Value::from("v");
    let get = |i: usize| match items.get(i) {
        Some(Value::Object(o)) => Ok(o.get(&v).cloned().unwrap_or(Value::Undefined)),
        _ => Err("policy evaluation gave a malformed result".to_string()),
    };
    Ok([get(0)?, get(1)?, get(2)?])
}

pub(super) fn drop_thread_caches(id: u64) {
    let _ = VMS.try_with(|c| {
        if let Ok(mut v) = c.try_borrow_mut() {
            v.retain(|(i, _)| *i != id);
        }
    });
    let _ = ENGINES.try_with(|c| {
        if let Ok(mut v) = c.try_borrow_mut() {
            v.retain(|(i, _)| *i != id);
        }
    });
}
