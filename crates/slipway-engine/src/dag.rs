//! Dependency graphs of pipelines and of the steps inside a pipeline: validation up front and
//! "what may start now" while running.

use std::collections::{HashMap, HashSet};

use slipway_spec::plan::{PipelinePlan, Plan};

use crate::error::EngineError;

/// Checks every graph of the plan before anything runs, so a bad plan never leaves half a
/// build behind.
pub(crate) fn validate(plan: &Plan) -> Result<(), EngineError> {
    Dag::new(
        "pipeline",
        plan.pipelines
            .iter()
            .map(|p| (p.name.as_str(), p.depends_on.as_slice())),
    )
    .map_err(EngineError::InvalidPlan)?;
    for pipeline in &plan.pipelines {
        steps(pipeline).map_err(EngineError::InvalidPlan)?;
        let mut names: HashSet<&str> = pipeline.steps.iter().map(|s| s.name.as_str()).collect();
        for service in &pipeline.services {
            if !names.insert(&service.name) {
                return Err(EngineError::InvalidPlan(format!(
                    "pipeline `{}`: the name `{}` is used by two services or by a service and a step",
                    pipeline.name, service.name
                )));
            }
        }
    }
    Ok(())
}

/// The step graph of a pipeline.
pub(crate) fn steps(pipeline: &PipelinePlan) -> Result<Dag, String> {
    Dag::new(
        "step",
        pipeline
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
    )
    .map_err(|e| format!("pipeline `{}`: {e}", pipeline.name))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Started,
    Done,
}

/// A validated DAG over nodes `0..n`; tracks which nodes have started and finished.
#[derive(Debug)]
pub(crate) struct Dag {
    deps: Vec<Vec<usize>>,
    state: Vec<State>,
}

impl Dag {
    /// `nodes` are `(name, depends_on)`. Fails (with a message naming `what`: "pipeline" or
    /// "step") on duplicate names, unknown dependencies and cycles.
    pub(crate) fn new<'a, I>(what: &str, nodes: I) -> Result<Dag, String>
    where
        I: IntoIterator<Item = (&'a str, &'a [String])>,
    {
        let nodes: Vec<(&str, &[String])> = nodes.into_iter().collect();
        let mut index = HashMap::new();
        for (i, (name, _)) in nodes.iter().enumerate() {
            if index.insert(*name, i).is_some() {
                return Err(format!("two {what}s are named `{name}`"));
            }
        }
        let mut deps = Vec::with_capacity(nodes.len());
        for (name, depends_on) in &nodes {
            let mut mine = Vec::new();
            for dep in *depends_on {
                match index.get(dep.as_str()) {
                    Some(&d) => mine.push(d),
                    None => {
                        return Err(format!(
                            "{what} `{name}` depends on `{dep}`, which does not exist"
                        ));
                    }
                }
            }
            deps.push(mine);
        }
        let dag = Dag {
            state: vec![State::Waiting; deps.len()],
            deps,
        };
        dag.check_acyclic(what, &nodes)?;
        Ok(dag)
    }

    fn check_acyclic(&self, what: &str, nodes: &[(&str, &[String])]) -> Result<(), String> {
        // Kahn's algorithm: whatever cannot be ordered is on (or behind) a cycle.
        let n = self.deps.len();
        let mut remaining: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in self.deps.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        let mut queue: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
        let mut ordered = 0;
        while let Some(i) = queue.pop() {
            ordered += 1;
            for &j in &dependents[i] {
                remaining[j] -= 1;
                if remaining[j] == 0 {
                    queue.push(j);
                }
            }
        }
        if ordered == n {
            return Ok(());
        }
        let stuck: Vec<&str> = (0..n)
            .filter(|&i| remaining[i] > 0)
            .map(|i| nodes[i].0)
            .collect();
        Err(format!(
            "{what}s form a dependency cycle: {}",
            stuck.join(", ")
        ))
    }

    /// Nodes not started yet whose dependencies are all done; they are marked started.
    pub(crate) fn take_ready(&mut self) -> Vec<usize> {
        let ready: Vec<usize> = (0..self.deps.len())
            .filter(|&i| {
                self.state[i] == State::Waiting
                    && self.deps[i].iter().all(|&d| self.state[d] == State::Done)
            })
            .collect();
        for &i in &ready {
            self.state[i] = State::Started;
        }
        ready
    }

    /// Nodes not started yet whose dependencies have all started (or finished).
    pub(crate) fn deps_started(&self) -> Vec<usize> {
        (0..self.deps.len())
            .filter(|&i| {
                self.state[i] == State::Waiting
                    && self.deps[i]
                        .iter()
                        .all(|&d| self.state[d] != State::Waiting)
            })
            .collect()
    }

    pub(crate) fn finish(&mut self, node: usize) {
        self.state[node] = State::Done;
    }

    pub(crate) fn deps(&self, node: usize) -> &[usize] {
        &self.deps[node]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_in_dependency_order() -> Result<(), String> {
        let (a, b, c) = (s(&[]), s(&["a"]), s(&["a"]));
        let d = s(&["b", "c"]);
        let mut dag = Dag::new(
            "step",
            [
                ("a", a.as_slice()),
                ("b", b.as_slice()),
                ("c", c.as_slice()),
                ("d", d.as_slice()),
            ],
        )?;
        assert_eq!(dag.take_ready(), vec![0]);
        assert!(dag.take_ready().is_empty());
        assert_eq!(dag.deps_started(), vec![1, 2]);
        dag.finish(0);
        assert_eq!(dag.take_ready(), vec![1, 2]);
        assert_eq!(dag.deps_started(), vec![3]);
        dag.finish(1);
        assert!(dag.take_ready().is_empty());
        dag.finish(2);
        assert_eq!(dag.take_ready(), vec![3]);
        Ok(())
    }

    #[test]
    fn rejects_unknown_duplicate_and_cycles() {
        let none = s(&[]);
        let x = s(&["x"]);
        let err = Dag::new("step", [("a", x.as_slice())]).err();
        assert_eq!(
            err.as_deref(),
            Some("step `a` depends on `x`, which does not exist")
        );
        let err = Dag::new("step", [("a", none.as_slice()), ("a", none.as_slice())]).err();
        assert_eq!(err.as_deref(), Some("two steps are named `a`"));
        let (a, b) = (s(&["b"]), s(&["a"]));
        let err = Dag::new("step", [("a", a.as_slice()), ("b", b.as_slice())]).err();
        assert_eq!(err.as_deref(), Some("steps form a dependency cycle: a, b"));
    }
}
