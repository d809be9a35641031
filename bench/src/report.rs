//! Results out: a Markdown table on stdout, JSON and a PNG bar chart on disk.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// A Markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// A grouped bar chart: one group per category, one bar per series. When
/// the values span more than 20x, the axis is logarithmic, so the small bars
/// stay readable beside the large ones.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[&str],
    series: &[(&str, Vec<f64>)],
) -> anyhow::Result<()> {
    let values = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let max = values().fold(0.0, f64::max);
    let min = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    if min.is_finite() && max / min > 20.0 {
        let floor = min / 2.0;
        let y_desc = format!("{y_desc} (log scale)");
        let axis = (floor..max * 2.0).log_scale();
        draw_bars(path, title, &y_desc, categories, series, axis, floor)
    } else {
        draw_bars(
            path,
            title,
            y_desc,
            categories,
            series,
            0.0..(max * 1.15).max(1e-9),
            0.0,
        )
    }
}

/// The chart on a `y` axis, bars standing on `bottom`.
fn draw_bars<Y>(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[&str],
    series: &[(&str, Vec<f64>)],
    y: Y,
    bottom: f64,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    register_font()?;
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..categories.len() as f64, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                categories.get(i).map(|c| c.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()?;
    let width = 0.8 / series.len() as f64;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(s).to_rgba();
        chart
            .draw_series(values.iter().enumerate().map(|(c, v)| {
                let x0 = c as f64 + 0.1 + s as f64 * width;
                Rectangle::new(
                    [(x0, bottom), (x0 + width * 0.95, v.max(bottom))],
                    color.filled(),
                )
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

/// plotters draws text with a font we hand it; Debian's DejaVu (fonts-dejavu-core, installed by setup).
fn register_font() -> anyhow::Result<()> {
    static FONT: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    if FONT.get().is_some() {
        return Ok(());
    }
    let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow::anyhow!("{path}: {e} (scripts/setup.sh installs fonts-dejavu-core)")
    })?;
    let bytes: &'static [u8] = FONT.get_or_init(|| Box::leak(bytes.into_boxed_slice()));
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}
