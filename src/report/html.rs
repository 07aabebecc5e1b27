//! `metaforge report`: one self-contained HTML file (no network, no script) a person wants to
//! read: summary and verdict, the Pareto scatter with the front, score over generations, the
//! lineage tree with operators on its edges, the proposal funnel, and every candidate with its
//! code and a diff against its first parent.
//!
//! Charts are SVG drawn with plotters (no hand-written drawing code); the page layout is the
//! template `templates/report/report.html.j2`.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::archive::{pareto_front, Archive, Objective, Scored};
use crate::propose::Templates;
use crate::types::{Split, Stage};

#[derive(Serialize)]
struct CandidateView {
    id: String,
    short: String,
    name: String,
    operator: String,
    generation: u32,
    val: String,
    test: String,
    on_front: bool,
    parents: Vec<String>,
    code: String,
    diff: Option<String>,
    /// Per-task validation results, failures first (the dashboard's pages only).
    tasks: Vec<TaskView>,
}

#[derive(Serialize)]
struct TaskView {
    id: String,
    score: String,
    outcome: String,
    error: String,
}

/// How much of the page to write.
#[derive(Debug, Clone, Default)]
pub struct PageOptions {
    /// The page's body only, to be placed inside another page (the live dashboard).
    pub fragment: bool,
    /// Show only the best this many candidates in the table, the lineage and the code
    /// (every candidate still counts in the front and the charts).
    pub candidates: Option<usize>,
    /// Per-task results shown under each candidate (0: none).
    pub task_rows: usize,
}

fn cell(s: &Option<crate::archive::SplitScore>) -> String {
    match s {
        Some(s) if s.outcome == "ok" && s.stage == Stage::Full => {
            format!("{:.2} [{:.2}, {:.2}]", s.mean, s.ci_lo, s.ci_hi)
        }
        Some(s) if s.outcome == "ok" => format!("{:.2} ({} n={})", s.mean, s.stage, s.n),
        Some(s) => format!("{:.2} ({})", s.mean, s.outcome),
        None => "-".into(),
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a report chart failed: {e:?}")
}

type Root<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// An SVG picture of `size` drawn by `draw` on a white ground.
fn svg(size: (u32, u32), draw: impl FnOnce(&Root) -> Result<()>) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

/// Axes with a caption, validation score (0 to 1) upwards and `x` across.
fn score_axes<'a, 'b>(
    root: &'a Root<'b>,
    caption: &str,
    x: std::ops::Range<f64>,
    x_desc: &str,
    x_labels: usize,
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x, 0f64..1.02f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("validation score")
        .x_labels(x_labels)
        .draw()
        .map_err(plot_err)?;
    Ok(chart)
}

/// Score against cost, every feasible candidate, the front highlighted and joined.
fn pareto_svg(scored: &[Scored], front: &[usize], cost_label: &str) -> Result<String> {
    let cost = |s: &Scored| Objective::Cost.loss(s);
    let max_cost = scored.iter().filter(|s| s.ok).map(cost).fold(1.0, f64::max) * 1.08;
    svg((720, 420), |root| {
        let mut chart = score_axes(
            root,
            "Validation score vs cost (front in red)",
            0f64..max_cost,
            cost_label,
            10,
        )?;
        chart
            .draw_series(
                scored
                    .iter()
                    .filter(|s| s.ok)
                    .map(|s| Circle::new((cost(s), s.score), 4, RGBColor(120, 144, 156).filled())),
            )
            .map_err(plot_err)?;
        let mut line: Vec<(f64, f64)> = front.iter().map(|&i| (cost(&scored[i]), scored[i].score)).collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), RED.stroke_width(2)))
            .map_err(plot_err)?;
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 6, RED.filled())))
            .map_err(plot_err)?;
        Ok(())
    })
}

/// Every candidate's validation score by generation, and the best so far.
fn generations_svg(scored: &[Scored]) -> Result<String> {
    let last = scored.iter().map(|s| s.generation).max().unwrap_or(0).max(1);
    let mut best = Vec::new();
    let mut so_far = f64::MIN;
    for g in 0..=last {
        if let Some(m) = scored
            .iter()
            .filter(|s| s.ok && s.generation == g)
            .map(|s| s.score)
            .reduce(f64::max)
        {
            so_far = so_far.max(m);
        }
        if so_far > f64::MIN {
            best.push((g as f64, so_far));
        }
    }
    svg((720, 320), |root| {
        let mut chart = score_axes(
            root,
            "Validation score over generations (line: best so far)",
            -0.3f64..last as f64 + 0.3,
            "generation",
            last as usize + 1,
        )?;
        chart
            .draw_series(
                scored
                    .iter()
                    .filter(|s| s.ok)
                    .map(|s| Circle::new((s.generation as f64, s.score), 4, BLUE.mix(0.6).filled())),
            )
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(best, GREEN.stroke_width(2)))
            .map_err(plot_err)?;
        Ok(())
    })
}

/// The lineage as a layered tree: one column per generation, edges labelled by operator.
fn lineage_svg(views: &[CandidateView]) -> Result<String> {
    let mut columns: HashMap<u32, Vec<&CandidateView>> = HashMap::new();
    for v in views {
        columns.entry(v.generation).or_default().push(v);
    }
    let generations = columns.keys().max().copied().unwrap_or(0) + 1;
    let rows = columns.values().map(Vec::len).max().unwrap_or(1);
    let (col_w, row_h) = (230i32, 56i32);
    let size = (
        (generations as i32 * col_w + 40) as u32,
        (rows as i32 * row_h + 60) as u32,
    );
    let mut at: HashMap<&str, (i32, i32)> = HashMap::new();
    for (g, members) in &columns {
        for (k, v) in members.iter().enumerate() {
            at.insert(v.id.as_str(), (20 + *g as i32 * col_w, 40 + k as i32 * row_h));
        }
    }
    svg(size, |root| {
        for g in 0..generations {
            root.draw(&Text::new(
                format!("generation {g}"),
                (20 + g as i32 * col_w, 12),
                ("sans-serif", 13).into_font().color(&BLACK),
            ))
            .map_err(plot_err)?;
        }
        let font = ("sans-serif", 11).into_font();
        for v in views {
            let (x, y) = at[v.id.as_str()];
            for p in &v.parents {
                if let Some(&(px, py)) = at.get(p.as_str()) {
                    let (from, to) = ((px + 170, py + 10), (x, y + 10));
                    root.draw(&PathElement::new(
                        vec![from, to],
                        RGBColor(150, 150, 150).stroke_width(1),
                    ))
                    .map_err(plot_err)?;
                    let mid = ((from.0 + to.0) / 2 - 30, (from.1 + to.1) / 2 - 10);
                    root.draw(&Text::new(
                        v.operator.clone(),
                        mid,
                        font.clone().color(&RGBColor(110, 110, 110)),
                    ))
                    .map_err(plot_err)?;
                }
            }
        }
        for v in views {
            let (x, y) = at[v.id.as_str()];
            let color = if v.on_front {
                RGBColor(229, 57, 53)
            } else {
                RGBColor(84, 110, 122)
            };
            root.draw(&Rectangle::new([(x, y), (x + 170, y + 22)], color.filled()))
                .map_err(plot_err)?;
            let label: String = v.name.chars().take(24).collect();
            root.draw(&Text::new(
                format!("{label} {}", v.val.split(' ').next().unwrap_or("")),
                (x + 4, y + 5),
                font.clone().color(&WHITE),
            ))
            .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// The whole report page.
pub fn render(archive: &Archive) -> Result<String> {
    render_with(archive, &PageOptions::default())
}

/// The page, or the part of it `opts` asks for.
pub fn render_with(archive: &Archive, opts: &PageOptions) -> Result<String> {
    let mut status = super::status(archive)?;
    let total_candidates = status.leaderboard.len();
    let exp = crate::config::Experiment::parse_stored(&archive.config_text()?, archive.path())?;
    let scored = archive.scored(Split::Val)?;
    let front_idx = pareto_front(&scored, &exp.search.objectives);
    let front: std::collections::HashSet<&str> = front_idx.iter().map(|&i| scored[i].id.as_str()).collect();
    let lineage = archive.lineage()?;
    let mut views = Vec::new();
    let shown = opts.candidates.unwrap_or(usize::MAX);
    for row in status.leaderboard.iter().take(shown) {
        let code = archive.candidate(&row.id)?.map(|c| c.code).unwrap_or_default();
        let parents = lineage.parents(&row.id);
        let diff = match parents.first() {
            Some(p) => archive.candidate(p)?.map(|parent| {
                similar::TextDiff::from_lines(&parent.code, &code)
                    .unified_diff()
                    .context_radius(3)
                    .header(&format!("parent {}", &p[..12.min(p.len())]), "this candidate")
                    .to_string()
            }),
            None => None,
        };
        views.push(CandidateView {
            short: row.id[..12.min(row.id.len())].to_string(),
            id: row.id.clone(),
            name: row.name.clone(),
            operator: row.operator.clone(),
            generation: row.generation,
            val: cell(&row.val),
            test: cell(&row.test),
            on_front: front.contains(row.id.as_str()),
            parents,
            code,
            diff,
            tasks: if opts.task_rows > 0 {
                archive
                    .task_results(&row.id, Split::Val)?
                    .into_iter()
                    .take(opts.task_rows)
                    .map(|t| TaskView {
                        id: t.task_id,
                        score: format!("{:.2}", t.score),
                        outcome: t.outcome,
                        error: t.error.map(|e| e.chars().take(300).collect()).unwrap_or_default(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
        });
    }
    // With a cap, the status text and the guard table list the best candidates only (the
    // rest of the text counts every one).
    if let Some(cap) = opts.candidates {
        status.leaderboard.truncate(cap);
    }
    let mut status_text = super::render_status(&status);
    if total_candidates > status.leaderboard.len() {
        status_text.push_str(&format!(
            "\n({} more candidates below these {})\n",
            total_candidates - status.leaderboard.len(),
            status.leaderboard.len()
        ));
    }
    let guards = super::guard_rows(&status.leaderboard);
    let priced = scored.iter().any(|s| s.cost > 0.0);
    let cost_label = if priced {
        "cost (USD, validation)"
    } else {
        "cost (tokens, validation)"
    };
    let (tokens, cost, cached) = archive.usage()?;
    let budget = match (exp.budget.max_tokens, exp.budget.max_cost_usd) {
        (None, None) => format!("{tokens} tokens, ${cost:.4} spent (no budget set); {cached} model calls cached"),
        (t, c) => format!(
            "{tokens} of {} tokens, ${cost:.4} of {} spent; {cached} model calls cached",
            t.map_or("unlimited".into(), |t| t.to_string()),
            c.map_or("unlimited".into(), |c| format!("${c:.2}"))
        ),
    };
    let templates = Templates::embedded()?;
    templates.render(
        "report/report.html.j2",
        serde_json::json!({
            "fragment": opts.fragment,
            "budget": budget,
            "total_candidates": total_candidates,
            "status": &status,
            "status_text": status_text,
            "objectives": format!("{:?}", exp.search.objectives),
            "agent_model": exp.models.agent.primary().model,
            "meta_model": exp.models.meta.iter().map(|(n, m)| if exp.models.meta.is_named() { format!("{n}: {}", m.model) } else { m.model.clone() }).collect::<Vec<_>>().join(", "),
            "candidates": &views,
            "guards": guards,
            "front_count": front_idx.len(),
            "pareto_svg": pareto_svg(&scored, &front_idx, cost_label)?,
            "generations_svg": generations_svg(&scored)?,
            "lineage_svg": lineage_svg(&views)?,
        }),
    )
}
