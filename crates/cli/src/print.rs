//! How the user's commands print a job, the same whether it was read from a store (`user.rs`)
//! or from a caas server (`remote.rs`).

use caas_client::JobView;

/// A job's state and its datasets', one line each.
pub(crate) fn print_job(job: &JobView) {
    println!(
        "{}  {} ({})",
        job.job,
        job.state.neurocaas_word(),
        job.state
    );
    if let Some(r) = &job.reason {
        println!("  reason: {r}");
    }
    if let Some(p) = &job.parent {
        println!("  after: {p} (this job is a [[then]] step of it)");
    }
    for c in &job.children {
        println!("  then:  {c}");
    }
    for d in &job.datasets {
        println!(
            "  {:<30} {:<12} {}{}",
            d.name,
            d.state.neurocaas_word(),
            d.state,
            d.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
}
