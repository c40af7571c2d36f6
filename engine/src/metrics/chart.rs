//! The dashboard's pictures, drawn by `plotters` into SVG on the server: a line chart of a
//! measure per task over the last minutes ([`line_chart`]) and the job's graph
//! ([`graph_picture`]: tasks in columns by depth, edges between them, live figures in each
//! box). The page embeds the SVG as it is: no script and no network needed to see it.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::error::MetricsError;
use super::observed::JobGraph;

/// The series' colours, one per task in name order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn chart_error<E: std::error::Error + Send + Sync + 'static>(
    chart: &'static str,
) -> impl Fn(E) -> MetricsError {
    move |e| MetricsError::Chart {
        chart,
        source: Box::new(e),
    }
}

/// A line chart of `series` (per task, `(seconds, value)` points; `now` is the latest time),
/// as SVG of `size` pixels, with the x axis in seconds before `now`.
pub fn line_chart(
    name: &'static str,
    y_label: &str,
    series: &BTreeMap<String, Vec<(f64, f64)>>,
    now: f64,
    size: (u32, u32),
) -> Result<String, MetricsError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error(name))?;
        let span = series
            .values()
            .flatten()
            .map(|&(at, _)| now - at)
            .fold(60.0_f64, f64::max);
        let top = series
            .values()
            .flatten()
            .map(|&(_, v)| v)
            .fold(1.0_f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(56)
            .build_cartesian_2d(-span..0.0, 0.0..top)
            .map_err(chart_error(name))?;
        chart
            .configure_mesh()
            .x_desc("seconds ago")
            .y_desc(y_label)
            .x_labels(7)
            .y_labels(5)
            .x_label_formatter(&|x| {
                if x.abs() < 0.5 {
                    "now".to_owned()
                } else {
                    format!("{:.0}", -x)
                }
            })
            .y_label_formatter(&|y| compact_number(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(chart_error(name))?;
        for (i, (task, points)) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(at, v)| (at - now, v)),
                    colour.stroke_width(2),
                ))
                .map_err(chart_error(name))?
                .label(task.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(chart_error(name))?;
        }
        root.present().map_err(chart_error(name))?;
    }
    Ok(svg)
}

/// What a task's box in the graph shows under its name.
#[derive(Debug, Clone, Default)]
pub struct TaskFigures {
    /// e.g. `1,234 seg/s`.
    pub throughput: String,
    /// e.g. `wm 12:00:05 · lag 3s`, or empty.
    pub watermark: String,
    /// e.g. `2 rejected`, or empty.
    pub rejected: String,
}

/// The job's graph as SVG: one box per task (columns by depth), arrows along the workflow's
/// edges, each box with its task's figures.
pub fn graph_picture(
    graph: &JobGraph,
    figures: &BTreeMap<String, TaskFigures>,
) -> Result<String, MetricsError> {
    const NAME: &str = "job graph";
    let (box_w, box_h, gap_x, gap_y, pad) = (210_i32, 78_i32, 60_i32, 16_i32, 10_i32);
    let depths = graph.depths();
    let columns = depths.iter().copied().max().map_or(1, |d| d + 1);
    let mut row_in_column = vec![0_i32; columns];
    let mut place = Vec::with_capacity(graph.tasks.len());
    for &d in &depths {
        place.push((
            pad + d as i32 * (box_w + gap_x),
            pad + row_in_column[d] * (box_h + gap_y),
        ));
        row_in_column[d] += 1;
    }
    let rows = row_in_column.iter().copied().max().unwrap_or(1).max(1);
    let width = (2 * pad + columns as i32 * box_w + (columns as i32 - 1) * gap_x) as u32;
    let height = (2 * pad + rows * box_h + (rows - 1) * gap_y) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_error(NAME))?;
        let index = |name: &str| graph.tasks.iter().position(|(n, _)| n == name);
        for (from, to) in &graph.edges {
            let (Some(f), Some(t)) = (index(from), index(to)) else {
                continue;
            };
            let start = (place[f].0 + box_w, place[f].1 + box_h / 2);
            let end = (place[t].0, place[t].1 + box_h / 2);
            root.draw(&PathElement::new(
                vec![start, end],
                BLACK.mix(0.5).stroke_width(2),
            ))
            .map_err(chart_error(NAME))?;
            root.draw(&Polygon::new(
                vec![end, (end.0 - 9, end.1 - 5), (end.0 - 9, end.1 + 5)],
                BLACK.mix(0.6).filled(),
            ))
            .map_err(chart_error(NAME))?;
        }
        for (i, (name, kind)) in graph.tasks.iter().enumerate() {
            let (x, y) = place[i];
            let fill = match *kind {
                "input" => RGBColor(225, 238, 250),
                "output" => RGBColor(229, 245, 229),
                _ => RGBColor(250, 243, 225),
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + box_w, y + box_h)],
                fill.filled(),
            ))
            .map_err(chart_error(NAME))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + box_w, y + box_h)],
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(chart_error(NAME))?;
            let f = figures.get(name).cloned().unwrap_or_default();
            let lines = [
                (
                    format!("{name} ({kind})"),
                    ("sans-serif", 15).into_font().style(FontStyle::Bold),
                ),
                (f.throughput, ("sans-serif", 13).into_font()),
                (f.watermark, ("sans-serif", 12).into_font()),
                (f.rejected, ("sans-serif", 12).into_font()),
            ];
            for (n, (text, font)) in lines.into_iter().enumerate() {
                if text.is_empty() {
                    continue;
                }
                root.draw(&Text::new(text, (x + 8, y + 6 + n as i32 * 17), font))
                    .map_err(chart_error(NAME))?;
            }
        }
        root.present().map_err(chart_error(NAME))?;
    }
    Ok(svg)
}

/// `1234567` → `1.2M`, `12345` → `12.3k`, `12` → `12`, `0.5` → `0.5`.
pub fn compact_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chart holds each task's line and name, and its axis labels.
    #[test]
    fn a_line_chart_names_its_series_and_axes() {
        let series = BTreeMap::from([
            (
                "read".to_owned(),
                vec![(1.0, 10.0), (2.0, 30.0), (3.0, 20.0)],
            ),
            ("count".to_owned(), vec![(1.0, 5.0), (2.0, 5.0), (3.0, 6.0)]),
        ]);
        let svg = line_chart("throughput", "segments/s", &series, 3.0, (600, 240)).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(
            svg.contains("\nread\n") && svg.contains("\ncount\n"),
            "{svg}"
        );
        assert!(svg.contains("seconds ago") && svg.contains("segments/s"));
        // Each task's line (width 2) and its legend mark, in its colour.
        for colour in ["#1F77B4", "#FF7F0E"] {
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(colour))
                .count();
            assert_eq!(lines, 2, "{colour} in {svg}");
        }
    }

    /// The graph draws every task with its figures and one arrow per edge.
    #[test]
    fn the_graph_shows_every_task_and_edge() {
        let graph = JobGraph {
            tasks: vec![
                ("in".to_owned(), "input"),
                ("count".to_owned(), "function"),
                ("out".to_owned(), "output"),
            ],
            edges: vec![
                ("in".to_owned(), "count".to_owned()),
                ("count".to_owned(), "out".to_owned()),
            ],
        };
        let figures = BTreeMap::from([(
            "in".to_owned(),
            TaskFigures {
                throughput: "12 seg/s".to_owned(),
                watermark: String::new(),
                rejected: "1 rejected".to_owned(),
            },
        )]);
        let svg = graph_picture(&graph, &figures).unwrap();
        for text in [
            "in (input)",
            "count (function)",
            "out (output)",
            "12 seg/s",
            "1 rejected",
        ] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert_eq!(svg.matches("<polygon").count(), 2, "{svg}");
    }

    #[test]
    fn numbers_are_compact() {
        let shown: Vec<String> = [1_234_567.0, 12_345.0, 12.0, 0.5, 3.0]
            .into_iter()
            .map(compact_number)
            .collect();
        assert_eq!(shown, ["1.2M", "12.3k", "12", "0.5", "3"]);
    }
}
