//! The tools every candidate may import (`runtime/metaforge/tools.py`), run in a real Python
//! interpreter: the calculator computes arithmetic and refuses everything else, and each
//! answer-extraction strategy picks what it names.

use std::process::Command;

fn python(code: &str) -> String {
    let runtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .env("PYTHONPATH", runtime)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_calculator_computes_arithmetic_and_refuses_anything_else() {
    let out = python(
        r#"
from metaforge.tools import calc, calc_in
print(calc("12 * 5 + 1"), calc("7 x 2"), calc("3 × (4 - 1)"), calc("10 / 4"), calc("2^3"), calc("1,200 + 1"))
print(calc_in("The calculation: 23 * 6 = "), calc_in("no numbers here"), calc_in("5 apples"))
for bad in ["__import__('os').system('id')", "(1).__class__", "9**9**9", "10**100", "a + 1", "1/0", "", "1" * 300]:
    try:
        calc(bad)
        print("ACCEPTED", repr(bad))
    except ValueError:
        pass
print("done")
"#,
    );
    assert_eq!(out, "61 14 9 2.5 8 1201\n138 None None\ndone\n");
}

#[test]
fn each_extraction_strategy_keeps_its_part() {
    let out = python(
        r#"
from metaforge.tools import extract, EXTRACTORS
reply = "\n 81 apples\nQuestion: and then? Answer: 5 pears\nmore 7"
for how in ["first_line", "after_answer", "first_number", "last_number", "whole"]:
    print(how, "=", repr(extract(reply, how)))
try:
    extract(reply, "middle")
except ValueError as e:
    print("refused:", "first_line" in str(e))
"#,
    );
    assert_eq!(
        out,
        "first_line = '81 apples'\nafter_answer = '5 pears'\nfirst_number = '81'\nlast_number = '7'\nwhole = '81 apples\\nQuestion: and then? Answer: 5 pears\\nmore 7'\nrefused: True\n"
    );
}

/// A multiple-choice task shows its options and is answered by letter; a free reply is read
/// as the letter it names, else the option whose words it names, else the nearest option.
/// The article "a" is never option A.
#[test]
fn a_free_reply_is_read_as_the_option_it_means() {
    let out = python(
        r#"
from metaforge.tools import as_choice, option_texts, task_choices, task_text
t = {"question": "What is the opposite of hot?", "options": ["cold", "tall", "early", "sad"]}
print(repr(task_text(t)))
print(task_choices(t), option_texts(t))
for reply in ["B", "(C) early", "a cold one", "Answer: D", "the answer is cold", "coldd", "I think A) cold, not B"]:
    print(repr(reply), "->", as_choice(reply, t))
"#,
    );
    assert_eq!(
        out,
        "'What is the opposite of hot?\\nA) cold\\nB) tall\\nC) early\\nD) sad'\n\
         ['A', 'B', 'C', 'D'] ['cold', 'tall', 'early', 'sad']\n\
         'B' -> B\n'(C) early' -> C\n'a cold one' -> A\n'Answer: D' -> D\n'the answer is cold' -> A\n'coldd' -> A\n'I think A) cold, not B' -> A\n"
    );
}

/// A label task answers with its labels as whole words in any case; a task with a free
/// answer passes through every helper unchanged, so one agent serves all three.
#[test]
fn labels_are_read_as_whole_words_and_free_answers_pass_through() {
    let out = python(
        r#"
from metaforge import majority
from metaforge.tools import as_choice, option_texts, task_choices, task_text
t = {"question": "What kind of thing is a cello?", "choices": ["tool", "instrument", "drink"]}
for reply in ["Instrument.", "It is a musical instrument, not a tool", "toolbox", "drinks"]:
    print(repr(reply), "->", as_choice(reply, t))
print(majority(["a tool", "Instrument", "the instrument!", "tool?", "INSTRUMENT"], t))
free = {"question": "What is 2 + 3?"}
print(task_choices(free), option_texts(free), repr(task_text(free)), repr(as_choice("5 apples", free)))
print(majority(["5", "five: 5", "6"]), majority(["5", "five: 5", "6"], free))
"#,
    );
    assert_eq!(
        out,
        "'Instrument.' -> instrument\n'It is a musical instrument, not a tool' -> instrument\n'toolbox' -> tool\n'drinks' -> drink\n\
         instrument\n\
         None None 'What is 2 + 3?' '5 apples'\n5 5\n"
    );
}
