//! The coordination replica and the schedulers (DESIGN §6), pure: generated runs through
//! simulated processes with named invariants, scheduler tables on small clusters, and the time
//! machine.

mod generative;
mod invariants;
mod restarts;
mod schedulers;
mod sim;
