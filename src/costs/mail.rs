//! Emailing the cost report over SMTP, with the plot attached. STARTTLS by default; the username and password come from
//! the environment only (`SMTP_USERNAME`, `SMTP_PASSWORD`) and never appear in logs or errors.

use anyhow::{Context, Result};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};

use super::plot::write_plots;
use super::report::CostReport;
use crate::secret::Secret;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which is required (port 587 by default).
    #[default]
    Starttls,
    /// TLS from the start (port 465 by default).
    Tls,
    /// No encryption, for a relay on localhost only (port 25 by default).
    None,
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub host: String,
    pub port: Option<u16>,
    pub security: SmtpSecurity,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    /// Username and password, from the environment.
    pub credentials: Option<(String, Secret)>,
}

/// A file sent with the message.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Emails the report: the headline as the subject, the text report as the body, and, with
/// `plot`, the plot of daily spend per user as a PNG.
pub async fn send_report(settings: &MailSettings, report: &CostReport, plot: bool) -> Result<()> {
    let mut body = Vec::new();
    report.write_text(&mut body)?;
    let body = String::from_utf8(body).context("the report is not UTF-8")?;
    let attachments = match plot {
        true => vec![plot_attachment(report)?],
        false => Vec::new(),
    };
    let subject = report.headline();
    let recipients = settings.to.len();
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || send(&settings, &subject, body, attachments)).await??;
    tracing::info!("emailed the report to {recipients} recipient(s)");
    Ok(())
}

/// The window's plot as a PNG for the email, drawn in a temporary folder.
fn plot_attachment(report: &CostReport) -> Result<Attachment> {
    let dir = tempfile::tempdir().context("creating a temporary folder for the plot")?;
    let (png, svg) = (dir.path().join("plot.png"), dir.path().join("plot.svg"));
    write_plots(report, &png, &svg)?;
    Ok(Attachment {
        name: format!(
            "spend-per-user-{}-to-{}.png",
            report.window_first, report.window_last
        ),
        content_type: "image/png".into(),
        body: std::fs::read(&png).context("reading the plot back")?,
    })
}

/// Sends one plain-text message, with attachments if any. Blocks until the server accepted it.
pub fn send(
    settings: &MailSettings,
    subject: &str,
    body: String,
    attachments: Vec<Attachment>,
) -> Result<()> {
    let mut message = Message::builder()
        .from(settings.from.clone())
        .subject(subject);
    for to in &settings.to {
        message = message.to(to.clone());
    }
    let message = if attachments.is_empty() {
        message.header(ContentType::TEXT_PLAIN).body(body)
    } else {
        let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(body));
        for a in attachments {
            let content_type = ContentType::parse(&a.content_type)
                .with_context(|| format!("content type {:?}", a.content_type))?;
            parts = parts
                .singlepart(lettre::message::Attachment::new(a.name).body(a.body, content_type));
        }
        message.multipart(parts)
    }
    .context("building the email")?;
    let host = settings.host.as_str();
    let mut transport = match settings.security {
        SmtpSecurity::Starttls => SmtpTransport::starttls_relay(host)?,
        SmtpSecurity::Tls => SmtpTransport::relay(host)?,
        SmtpSecurity::None => SmtpTransport::builder_dangerous(host),
    };
    if let Some(port) = settings.port {
        transport = transport.port(port);
    }
    if let Some((user, password)) = &settings.credentials {
        transport = transport.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    transport
        .build()
        .send(&message)
        .with_context(|| format!("sending the report by SMTP via {host}"))?;
    Ok(())
}
