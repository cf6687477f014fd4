//! Plots of daily spend per user over the report's window, as PNG and SVG. Text is drawn with a
//! font embedded in the binary (DejaVu Sans, `assets/fonts`), so plots render the same on a
//! machine without any system fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::money::{format_dollars, to_dollars};
use super::report::CostReport;

/// Users drawn as their own line; the rest are summed into one "others" line.
const MAX_USERS: usize = 8;
const SIZE: (u32, u32) = (1280, 720);
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// One line of the plot: a name and a dollar amount per day of the window.
struct Line {
    name: String,
    dollars: Vec<f64>,
    total_nanos: i64,
}

/// Writes the plot of `report`'s window to `png` and `svg`.
pub fn write_plots(report: &CostReport, png: &Path, svg: &Path) -> Result<()> {
    register_font()?;
    let lines = lines(report);
    draw(
        BitMapBackend::new(png, SIZE).into_drawing_area(),
        report,
        &lines,
    )
    .with_context(|| format!("drawing {}", png.display()))?;
    draw(
        SVGBackend::new(svg, SIZE).into_drawing_area(),
        report,
        &lines,
    )
    .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}

/// The plot of `report`'s window as SVG text (for the console).
pub fn svg(report: &CostReport) -> Result<String> {
    register_font()?;
    let lines = lines(report);
    let mut out = String::new();
    draw(
        SVGBackend::with_string(&mut out, SIZE).into_drawing_area(),
        report,
        &lines,
    )
    .context("drawing the plot")?;
    Ok(out)
}

fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow::anyhow!("the embedded font does not load"));
    });
    result
}

/// The largest users' daily spend, largest first, then "others" if any are left.
fn lines(report: &CostReport) -> Vec<Line> {
    let per_day = |user: &str| -> Vec<f64> {
        let days = report.user_days.get(user);
        report
            .days
            .iter()
            .map(|d| to_dollars(days.and_then(|m| m.get(&d.day)).copied().unwrap_or(0)))
            .collect()
    };
    let mut lines: Vec<Line> = report
        .users
        .iter()
        .take(MAX_USERS)
        .map(|u| Line {
            name: u.name.clone(),
            dollars: per_day(&u.name),
            total_nanos: u.nanos,
        })
        .collect();
    let rest = &report.users[report.users.len().min(MAX_USERS)..];
    if !rest.is_empty() {
        let per_user: Vec<Vec<f64>> = rest.iter().map(|u| per_day(&u.name)).collect();
        lines.push(Line {
            name: format!("{} others", rest.len()),
            dollars: (0..report.days.len())
                .map(|i| per_user.iter().map(|r| r[i]).sum())
                .collect(),
            total_nanos: rest.iter().map(|u| u.nanos).sum(),
        });
    }
    lines
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &CostReport,
    lines: &[Line],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let days: Vec<chrono::NaiveDate> = report.days.iter().map(|d| d.day).collect();
    let last_index = i32::try_from(days.len())
        .unwrap_or(i32::MAX)
        .saturating_sub(1)
        .max(1);
    let top = lines
        .iter()
        .flat_map(|l| l.dollars.iter().copied())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Daily AWS spend per user, {} to {}",
                report.window_first, report.window_last
            ),
            ("sans-serif", 28),
        )
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(100)
        .build_cartesian_2d(0..last_index, 0.0..top)?;
    let label_day = |i: &i32| {
        usize::try_from(*i)
            .ok()
            .and_then(|i| days.get(i))
            .map(|d| d.format("%b %d").to_string())
            .unwrap_or_default()
    };
    let label_dollars = |y: &f64| {
        if top < 10.0 {
            format!("${y:.2}")
        } else {
            format!("${y:.0}")
        }
    };
    chart
        .configure_mesh()
        .x_desc(format!("Day ({})", report.time_zone))
        .y_desc("Spend per day (USD)")
        .x_labels(days.len().min(14))
        .x_label_formatter(&label_day)
        .y_label_formatter(&label_dollars)
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 20))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.dollars.iter().enumerate().map(|(d, v)| (d as i32, *v)),
                color.stroke_width(3),
            ))?
            .label(format!(
                "{} ({})",
                line.name,
                format_dollars(line.total_nanos)
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
