//! `harmonia-scheduler completions <shell>`: a shell completion script on stdout, e.g.
//! `harmonia-scheduler completions bash > /etc/bash_completion.d/harmonia-scheduler`.

use std::process::ExitCode;

use clap::CommandFactory;

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: &CompletionsArgs) -> ExitCode {
    let mut command = super::Args::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "harmonia-scheduler",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}
