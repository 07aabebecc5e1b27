//! Normal forms of a program. The candidate id hashes `normalized_source` (so a reformatted
//! or re-commented program is the same candidate); `structure_fingerprint` hashes the tree
//! shape with identifiers and literals abstracted (so a program that differs only in a
//! constant or a prompt string is recognisably a near-duplicate).

use sha2::{Digest, Sha256};
use tree_sitter::Node;

/// Leaf tokens without comments, separated by single spaces.
pub fn normalized_source(root: Node, source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if node.kind() == "comment" {
            continue;
        }
        if node.child_count() == 0 {
            let text = &source[node.byte_range()];
            if !text.is_empty() {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(text);
            }
            continue;
        }
        let mut cursor = node.walk();
        let children: Vec<_> = node.children(&mut cursor).collect();
        stack.extend(children.into_iter().rev());
    }
    out
}

/// SHA-256 (hex, 16 chars) of the pre-order sequence of named node kinds.
pub fn structure_fingerprint(root: Node, _source: &str) -> String {
    let mut hasher = Sha256::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if node.kind() == "comment" {
            continue;
        }
        if node.is_named() {
            hasher.update(node.kind().as_bytes());
            hasher.update(b"(");
        }
        let mut cursor = node.walk();
        let children: Vec<_> = node.named_children(&mut cursor).collect();
        // String contents are literals: keep the string node, drop its inner pieces.
        if node.kind() != "string" {
            stack.extend(children.into_iter().rev());
        }
    }
    hex::encode(&hasher.finalize()[..8])
}
