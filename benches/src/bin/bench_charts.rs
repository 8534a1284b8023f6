//! The benchmark report's charts: PNGs drawn from the raw results the comparison harnesses
//! write with `--json` (`benches/compare/report.py` runs this after them).
//!
//! `bench_charts DATA_DIR OUT_DIR` reads whichever of `restore.json`, `vfs.json`, `lag.json`,
//! `requests.json` and `replicate.json` exist in DATA_DIR and writes one PNG for each into
//! OUT_DIR, printing each file's name. Text needs a TrueType font: `STRATA_CHART_FONT`, or
//! DejaVu Sans or Liberation Sans where Debian and Fedora put them (`apt install
//! fonts-dejavu-core`).

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Draws one chart from a harness's results into a PNG.
type Chart = fn(&Value, &Path) -> Result<()>;

const SIZE: (u32, u32) = (960, 540);
const STRATA: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const LITESTREAM: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const NONE: RGBColor = RGBColor(0x70, 0x70, 0x70);

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, data, out] = &args[..] else {
        eprintln!("usage: bench_charts DATA_DIR OUT_DIR");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(data), Path::new(out)) {
        eprintln!("bench_charts: {e}");
        std::process::exit(1);
    }
}

fn run(data: &Path, out: &Path) -> Result<()> {
    load_font()?;
    std::fs::create_dir_all(out)?;
    let charts: [(&str, Chart); 5] = [
        ("restore", restore),
        ("vfs", vfs),
        ("requests", requests),
        ("replicate", throughput),
        ("lag", lag),
    ];
    for (name, draw) in charts {
        let input = data.join(format!("{name}.json"));
        if !input.exists() {
            continue;
        }
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&input)?)
            .map_err(|e| format!("{}: {e}", input.display()))?;
        let png = out.join(format!("{name}.png"));
        draw(&value, &png).map_err(|e| format!("{}: {e}", png.display()))?;
        println!("{}", png.display());
    }
    Ok(())
}

fn load_font() -> Result<()> {
    let path = std::env::var_os("STRATA_CHART_FONT")
        .map(PathBuf::from)
        .or_else(|| FONTS.iter().map(PathBuf::from).find(|p| p.exists()))
        .ok_or("no TrueType font found: set STRATA_CHART_FONT or install fonts-dejavu-core")?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The font is registered once for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
    Ok(())
}

/// Draws a chart's legend (its series' labels) in one corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// The numbers in a JSON array, those a chart can place: finite, and below 1e9 (seconds or
/// counts; anything larger is a broken input, and would overflow the axis range).
fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .filter(|x| x.is_finite() && x.abs() < 1e9)
                .collect()
        })
        .unwrap_or_default()
}

/// A single number a chart can place (see [`numbers`]).
fn number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite() && x.abs() < 1e9)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn tool_color(tool: &str) -> RGBColor {
    match tool {
        "strata" => STRATA,
        "litestream" => LITESTREAM,
        _ => NONE,
    }
}

/// Restore time against database size: median and min-max per tool and backend.
fn restore(v: &Value, png: &Path) -> Result<()> {
    let sizes = v["sizes"].as_array().ok_or("no sizes")?;
    let mut series = Vec::new();
    let mut max_x: f64 = 1.0;
    let mut max_y: f64 = 0.1;
    for backend in ["local", "s3"] {
        for tool in ["strata", "litestream"] {
            let mut points = Vec::new();
            for size in sizes {
                let samples = numbers(&size[backend][tool]);
                let (Some(mid), Some(x)) = (median(&samples), number(&size["db_mib"])) else {
                    continue;
                };
                let (lo, hi) = min_max(&samples);
                max_x = max_x.max(x);
                max_y = max_y.max(hi);
                points.push((x, mid, lo, hi));
            }
            if !points.is_empty() {
                series.push((backend, tool, points));
            }
        }
    }
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let latency = number(&v["latency_ms"]).unwrap_or(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Restore time by database size (S3: rclone + {latency:.0} ms per request)"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.08, 0.0..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("database size (MiB)")
        .y_desc("wall time (s), median and min-max")
        .label_style(("sans-serif", 14))
        .draw()?;
    for (backend, tool, points) in series {
        let color = tool_color(tool);
        let style = if backend == "local" {
            color.stroke_width(2)
        } else {
            color.mix(0.55).stroke_width(2)
        };
        let label = format!(
            "{tool}, {}",
            if backend == "local" {
                "directory"
            } else {
                "S3"
            }
        );
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        chart.draw_series(points.iter().map(|p| {
            if backend == "local" {
                Circle::new((p.0, p.1), 4, style.filled()).into_dyn()
            } else {
                TriangleMarker::new((p.0, p.1), 5, style.filled()).into_dyn()
            }
        }))?;
        chart.draw_series(
            points
                .iter()
                .map(|p| PathElement::new([(p.0, p.2), (p.0, p.3)], style)),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// Cold query latencies through each VFS, every sample, on a log scale.
fn vfs(v: &Value, png: &Path) -> Result<()> {
    let groups = ["open", "points", "range", "scan", "full"];
    let names = [
        "open",
        "point lookup",
        "index range",
        "scan 40k rows",
        "full scan",
    ];
    let queries = &v["queries"];
    let mut lo: f64 = 1.0;
    let mut hi: f64 = 1.0;
    for group in groups {
        for tool in ["strata", "litestream"] {
            let e = &queries[group][tool];
            let (a, b) = min_max(&numbers(&e["cold"]));
            let stopped = number(&e["stopped_after"]);
            lo = lo.min(a);
            hi = hi.max(b).max(stopped.unwrap_or(0.0));
        }
    }
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let latency = number(&v["latency_ms"]).unwrap_or(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("VFS cold query latency (rclone + {latency:.0} ms per request)"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        // A log scale cannot start at zero: latencies under 0.1 ms sit on the axis.
        .build_cartesian_2d(
            -0.5f64..groups.len() as f64 - 0.5,
            (lo.max(1e-4) / 2.0..hi * 3.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x: &f64| {
            let x = *x;
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).copied().unwrap_or("").to_string()
            } else {
                String::new()
            }
        })
        .y_desc("seconds (log scale); bar: median")
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (t, tool) in ["strata", "litestream"].into_iter().enumerate() {
        let color = tool_color(tool);
        let offset = if t == 0 { -0.18 } else { 0.18 };
        let mut first = true;
        for (g, group) in groups.iter().enumerate() {
            let e = &queries[*group][tool];
            let cold = numbers(&e["cold"]);
            let x = g as f64 + offset;
            let n = cold.len().max(1) as f64;
            let dots = chart.draw_series(cold.iter().enumerate().map(|(i, &y)| {
                // Spread the samples across the column so they do not hide one another.
                let jitter = (i as f64 / n - 0.5) * 0.2;
                Circle::new((x + jitter, y), 3, color.mix(0.6).filled())
            }))?;
            if first {
                dots.label(tool)
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
                first = false;
            }
            if let Some(m) = median(&cold) {
                chart.draw_series([PathElement::new(
                    [(x - 0.13, m), (x + 0.13, m)],
                    color.stroke_width(3),
                )])?;
            }
            if let Some(s) = number(&e["stopped_after"]) {
                chart.draw_series([TriangleMarker::new((x, s), 7, color.filled())])?;
                chart.draw_series([Text::new(
                    format!("stopped at {s:.0} s"),
                    (x - 0.35, s * 1.6),
                    ("sans-serif", 13).into_font().color(&color),
                )])?;
            }
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// Requests per hour by kind, busy and idle, one bar per tool.
fn requests(v: &Value, png: &Path) -> Result<()> {
    let kinds = ["LIST", "GET", "HEAD", "PUT", "DELETE"];
    let phases = ["busy", "idle"];
    let reqs = &v["requests"];
    let rate = |phase: &str, tool: &str, kind: &str| {
        number(&reqs[phase][tool][kind]["per_hour"]).unwrap_or(0.0)
    };
    let mut top: f64 = 10.0;
    for phase in phases {
        for tool in ["strata", "litestream"] {
            for kind in kinds {
                top = top.max(rate(phase, tool, kind));
            }
        }
    }
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let slots = phases.len() * kinds.len();
    let label_of = |x: &f64| -> String {
        let x = *x;
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 || i as usize >= slots {
            return String::new();
        }
        let i = i as usize;
        format!("{} {}", phases[i / kinds.len()], kinds[i % kinds.len()])
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Requests per hour per database (busy: {} txn/s)",
                number(&v["rate"]).unwrap_or(0.0)
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..slots as f64 - 0.5, 0.0..top * 1.12)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots)
        .x_label_formatter(&label_of)
        .y_desc("requests per hour")
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (t, tool) in ["strata", "litestream"].into_iter().enumerate() {
        let color = tool_color(tool);
        let bars = phases
            .iter()
            .flat_map(|phase| kinds.map(|kind| rate(phase, tool, kind)));
        let (from, to) = if t == 0 { (-0.4, -0.02) } else { (0.02, 0.4) };
        chart
            .draw_series(bars.enumerate().map(|(i, y)| {
                Rectangle::new([(i as f64 + from, 0.0), (i as f64 + to, y)], color.filled())
            }))?
            .label(tool)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// Writer throughput over time under each replicator (the first run of each mode), as a
/// one-second moving average.
fn throughput(v: &Value, png: &Path) -> Result<()> {
    let bin = number(&v["throughput_bin_s"])
        .filter(|&b| b > 0.0)
        .ok_or("no throughput_bin_s")?;
    let runs = v["runs"].as_array().ok_or("no runs")?;
    let window = ((1.0 / bin).round() as usize).max(1);
    let mut series = Vec::new();
    let (mut max_x, mut max_y): (f64, f64) = (1.0, 1.0);
    for mode in ["none", "strata", "litestream"] {
        let Some(run) = runs.iter().find(|r| r["mode"] == mode) else {
            continue;
        };
        let rates = numbers(&run["throughput"]);
        let points: Vec<(f64, f64)> = rates
            .windows(window.min(rates.len()).max(1))
            .enumerate()
            .map(|(i, w)| {
                (
                    (i + w.len()) as f64 * bin,
                    w.iter().sum::<f64>() / w.len() as f64,
                )
            })
            .collect();
        for &(x, y) in &points {
            max_x = max_x.max(x);
            max_y = max_y.max(y);
        }
        series.push((mode, points));
    }
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Writer throughput over time, small transactions (1 s moving average)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x * 1.02, 0.0..max_y * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first commit")
        .y_desc("commits per second")
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (mode, points) in series {
        let color = tool_color(mode);
        let label = if mode == "none" {
            "no replication"
        } else {
            mode
        };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// Commit-to-visible lag against the commit rate, per follower: p99 thick, p50 thin, both
/// axes logarithmic.
fn lag(v: &Value, png: &Path) -> Result<()> {
    let runs = v["runs"].as_array().ok_or("no runs")?;
    let mut followers: Vec<&str> = Vec::new();
    for r in runs {
        if let Some(f) = r["follower"].as_str().filter(|f| !followers.contains(f)) {
            followers.push(f);
        }
    }
    let ms = |r: &Value, key: &str| number(&r[key]).map(|s| (s * 1000.0).max(0.1));
    let points = |follower: &str, key: &str| -> Vec<(f64, f64)> {
        runs.iter()
            .filter(|r| r["follower"] == follower)
            .filter_map(|r| Some((number(&r["rate"]).filter(|&x| x > 0.0)?, ms(r, key)?)))
            .collect()
    };
    let all: Vec<(f64, f64)> = followers
        .iter()
        .flat_map(|f| [points(f, "p50"), points(f, "p99")].concat())
        .collect();
    if all.is_empty() {
        return Err("no lags".into());
    }
    let (x_lo, x_hi) = min_max(&all.iter().map(|p| p.0).collect::<Vec<_>>());
    let (y_lo, y_hi) = min_max(&all.iter().map(|p| p.1).collect::<Vec<_>>());
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Commit-to-visible lag by commit rate (p99 thick, p50 thin)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_lo * 0.8..x_hi * 1.25).log_scale(),
            // Room above the highest line for the legend.
            (y_lo * 0.5..y_hi * 8.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("commits per second")
        .y_desc("lag (ms)")
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_label_formatter(&|y: &f64| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, follower) in followers.iter().enumerate() {
        let base = tool_color(follower.split('-').next().unwrap_or(""));
        // Followers of one tool in shades of its colour.
        let shade = 1.0
            - 0.3
                * (followers[..i]
                    .iter()
                    .filter(|f| f.split('-').next() == follower.split('-').next())
                    .count() as f64);
        let color = RGBColor(
            (f64::from(base.0) * shade) as u8,
            (f64::from(base.1) * shade) as u8,
            (f64::from(base.2) * shade) as u8,
        );
        chart.draw_series(LineSeries::new(
            points(follower, "p50"),
            color.stroke_width(1),
        ))?;
        chart
            .draw_series(LineSeries::new(
                points(follower, "p99"),
                color.stroke_width(3),
            ))?
            .label(*follower)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(
            points(follower, "p99")
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}
