//! `ifp`: the command-line entry point of the IFP platform (subcommands come next).

fn main() {}
