//! `meterbook costs`: ingest AWS detailed billing files, report spend (and email the report),
//! plot daily spend per user, load grants (see [`crate::costs`]).

use std::io::Write;

use anyhow::Result;

use crate::cli::{CostsArgs, CostsCommand, GlobalArgs, GrantsCommand, ReportFormat};
use crate::config::{CostIngestSettings, CostPlotSettings, CostReportSettings, Environment};
use crate::costs::report::CostReport;
use crate::costs::{grants, mail, plot};
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &CostsArgs, env: &Environment) -> Result<Outcome> {
    match &args.command {
        CostsCommand::Ingest(a) => {
            let settings = CostIngestSettings::resolve(global, a)?;
            Ok(crate::costs::ingest::run(&settings).await?.report())
        }
        CostsCommand::Report(a) => report(&CostReportSettings::resolve(global, a, env)?).await,
        CostsCommand::Plot(a) => {
            let settings = CostPlotSettings::resolve(global, a)?;
            let report = CostReport::from_ledger(&settings.ledger, &settings.window)?;
            let svg = settings.png.with_extension("svg");
            plot::write_plots(&report, &settings.png, &svg)?;
            println!("{}", settings.png.display());
            println!("{}", svg.display());
            Ok(Outcome::Success)
        }
        CostsCommand::Grants(GrantsCommand::Load { file }) => {
            grants::load(&global.ledger_file(), file)
        }
    }
}

async fn report(settings: &CostReportSettings) -> Result<Outcome> {
    let report = CostReport::from_ledger(&settings.ledger, &settings.window)?;
    {
        let mut out = std::io::stdout().lock();
        match settings.format {
            ReportFormat::Text => report.write_text(&mut out)?,
            ReportFormat::Json => report.write_json(&mut out)?,
            ReportFormat::Csv => report.write_csv(&mut out)?,
        }
        out.flush()?;
    }
    if let Some(mail) = &settings.mail {
        mail::send_report(mail, &report, settings.plot).await?;
    }
    Ok(report.attention())
}
