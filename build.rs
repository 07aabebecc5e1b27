// The runtime, templates, rules, seeds, experiments and data are embedded with include_dir;
// tell cargo to rebuild when any of them changes (stable include_dir cannot track new files).
fn main() {
    for dir in ["runtime", "templates", "grammars", "archive", "experiments", "data"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
