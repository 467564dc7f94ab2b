//! A run's DAG laid out in layers for SVG: each node's layer is its longest path from a root,
//! so every edge points right; within a layer, nodes are ordered by the mean position of their
//! neighbours (a few barycentre sweeps, as Sugiyama-style layouts do), which keeps most edges
//! short and uncrossed. Beyond `MAX_DRAWN` nodes a graph stops being readable: the page then
//! draws one box per layer with its counts, beside a table of every task.

use std::collections::HashMap;

/// Above this many tasks the run page draws layers, not nodes.
pub const MAX_DRAWN: usize = 200;

pub const NODE_W: u32 = 168;
pub const NODE_H: u32 = 46;
const GAP_X: u32 = 56;
const GAP_Y: u32 = 14;
const PAD: u32 = 8;
const SWEEPS: usize = 4;

/// What the layout needs of a task.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub id: &'a str,
    pub upstream: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// Index into the input.
    pub index: usize,
    pub layer: usize,
    pub x: u32,
    pub y: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// An SVG path from the right side of `from` to the left side of `to`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub nodes: Vec<Placed>,
    pub edges: Vec<Edge>,
    pub layers: usize,
    pub width: u32,
    pub height: u32,
}

/// Each node's layer: its longest path from a root. Upstream ids that name no node are
/// ignored (the scheduler never stores one), and so is any cycle (it never stores one either).
pub fn layers(nodes: &[Node<'_>]) -> Vec<usize> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut layer = vec![None::<usize>; nodes.len()];
    // Iterative depth-first evaluation; `visiting` breaks a cycle instead of looping.
    let mut visiting = vec![false; nodes.len()];
    for start in 0..nodes.len() {
        let mut stack = vec![start];
        while let Some(&i) = stack.last() {
            if layer[i].is_some() {
                stack.pop();
                continue;
            }
            visiting[i] = true;
            let ups: Vec<usize> = nodes[i]
                .upstream
                .iter()
                .filter_map(|u| index.get(u.as_str()).copied())
                .collect();
            if let Some(&next) = ups.iter().find(|&&u| layer[u].is_none() && !visiting[u]) {
                stack.push(next);
                continue;
            }
            let depth = ups.iter().filter_map(|&u| layer[u]).map(|l| l + 1).max();
            layer[i] = Some(depth.unwrap_or(0));
            visiting[i] = false;
            stack.pop();
        }
    }
    layer.into_iter().map(|l| l.unwrap_or(0)).collect()
}

/// Lays the nodes out left to right, one column per layer.
pub fn layout(nodes: &[Node<'_>]) -> Layout {
    let layer_of = layers(nodes);
    let count = layer_of.iter().max().map_or(0, |m| m + 1);
    let mut columns: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (i, &l) in layer_of.iter().enumerate() {
        columns[l].push(i);
    }
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let ups: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            n.upstream
                .iter()
                .filter_map(|u| index.get(u.as_str()).copied())
                .collect()
        })
        .collect();
    let mut downs: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, us) in ups.iter().enumerate() {
        for &u in us {
            downs[u].push(i);
        }
    }
    order(&mut columns, &ups, &downs, nodes.len());

    let mut placed: Vec<Option<Placed>> = vec![None; nodes.len()];
    for (l, column) in columns.iter().enumerate() {
        for (row, &i) in column.iter().enumerate() {
            placed[i] = Some(Placed {
                index: i,
                layer: l,
                x: PAD + l as u32 * (NODE_W + GAP_X),
                y: PAD + row as u32 * (NODE_H + GAP_Y),
            });
        }
    }
    let placed: Vec<Placed> = placed.into_iter().flatten().collect();
    let edges = ups
        .iter()
        .enumerate()
        .flat_map(|(to, us)| us.iter().map(move |&from| (from, to)))
        .map(|(from, to)| Edge {
            from,
            to,
            path: curve(&placed[from], &placed[to]),
        })
        .collect();
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0) as u32;
    Layout {
        nodes: placed,
        edges,
        layers: count,
        width: 2 * PAD
            + (count as u32)
                .saturating_mul(NODE_W + GAP_X)
                .saturating_sub(GAP_X),
        height: 2 * PAD + rows.saturating_mul(NODE_H + GAP_Y).saturating_sub(GAP_Y),
    }
}

/// Barycentre sweeps: down the layers by upstream positions, then up by downstream ones.
fn order(columns: &mut [Vec<usize>], ups: &[Vec<usize>], downs: &[Vec<usize>], n: usize) {
    let mut pos = vec![0f64; n];
    let record = |columns: &[Vec<usize>], pos: &mut Vec<f64>| {
        for column in columns {
            for (row, &i) in column.iter().enumerate() {
                pos[i] = row as f64;
            }
        }
    };
    record(columns, &mut pos);
    for sweep in 0..SWEEPS {
        let downward = sweep % 2 == 0;
        let neighbours = if downward { ups } else { downs };
        let layer_ids: Vec<usize> = if downward {
            (1..columns.len()).collect()
        } else {
            (0..columns.len().saturating_sub(1)).rev().collect()
        };
        for l in layer_ids {
            let key = |i: usize| {
                let ns = &neighbours[i];
                if ns.is_empty() {
                    pos[i]
                } else {
                    ns.iter().map(|&j| pos[j]).sum::<f64>() / ns.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = columns[l].iter().map(|&i| (key(i), i)).collect();
            // Stable: ties keep their order, so the layout is deterministic.
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            columns[l] = keyed.into_iter().map(|(_, i)| i).collect();
            for (row, &i) in columns[l].iter().enumerate() {
                pos[i] = row as f64;
            }
        }
    }
}

fn curve(from: &Placed, to: &Placed) -> String {
    let (x1, y1) = (from.x + NODE_W, from.y + NODE_H / 2);
    let (x2, y2) = (to.x, to.y + NODE_H / 2);
    let mid = (x1 + x2) / 2;
    format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(edges: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        edges
            .iter()
            .map(|(id, ups)| (id.to_string(), ups.iter().map(|u| u.to_string()).collect()))
            .collect()
    }

    fn nodes(d: &[(String, Vec<String>)]) -> Vec<Node<'_>> {
        d.iter()
            .map(|(id, ups)| Node { id, upstream: ups })
            .collect()
    }

    #[test]
    fn a_node_sits_one_layer_right_of_its_deepest_upstream() {
        let d = dag(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("d", &["a", "c"]),
            ("e", &[]),
        ]);
        assert_eq!(layers(&nodes(&d)), vec![0, 1, 2, 3, 0]);
    }

    #[test]
    fn every_edge_points_right_and_no_two_nodes_overlap() {
        let d = dag(&[
            ("fetch", &[]),
            ("x", &["fetch"]),
            ("y", &["fetch"]),
            ("z", &["fetch"]),
            ("join", &["x", "y", "z"]),
            ("tail", &["join", "x"]),
        ]);
        let l = layout(&nodes(&d));
        assert_eq!(l.layers, 4);
        assert_eq!(l.edges.len(), 8);
        for e in &l.edges {
            let (from, to) = (&l.nodes[e.from], &l.nodes[e.to]);
            assert!(from.x + NODE_W < to.x, "{e:?}");
        }
        for a in &l.nodes {
            assert!(a.x + NODE_W <= l.width && a.y + NODE_H <= l.height);
            for b in &l.nodes {
                let apart = a.index == b.index || a.x != b.x || a.y.abs_diff(b.y) >= NODE_H;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn sweeps_uncross_two_chains_listed_in_opposite_orders() {
        // Upstream order a1, a2 but downstream listed b2 (of a2) before b1 (of a1): the
        // barycentre pass puts b1 level with a1.
        let d = dag(&[("a1", &[]), ("a2", &[]), ("b2", &["a2"]), ("b1", &["a1"])]);
        let l = layout(&nodes(&d));
        let y = |i: usize| l.nodes[i].y;
        assert_eq!(y(3), y(0));
        assert_eq!(y(2), y(1));
    }

    #[test]
    fn a_cycle_or_an_unknown_upstream_still_lays_out() {
        let d = dag(&[("a", &["b"]), ("b", &["a"]), ("c", &["missing"])]);
        let l = layout(&nodes(&d));
        assert_eq!(l.nodes.len(), 3);
    }
}
