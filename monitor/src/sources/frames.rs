//! A report's frames with their source lines: which frames are return addresses, the record's
//! `source` and `stack_source`, and the text lines an inline chain expands to. The lines
//! themselves come from mod.rs; this module only decides what to ask for and how it reads.

use std::{path::PathBuf, sync::Arc};

use anyhow::Result;
use serde::Serialize;

use crate::{
    sources::debuginfo::DebugInfoSearch,
    sources::{SourceLine, SourceResolver},
    symbols::Frame,
};

/// Each frame's source lines (innermost first), or None where no debug info has them.
pub type FrameLines = Option<Arc<[SourceLine]>>;

/// Resolves frames against whatever debug info `--debuginfo` and the system offer. Each
/// distinct frame is resolved once (mod.rs keeps the answers), at a call site's first
/// sighting, never per flush.
pub struct FrameSources {
    resolver: SourceResolver,
}

impl FrameSources {
    /// Fails when a `--debuginfo` path does not exist: a typo must not silently mean no lines.
    pub fn new(dirs: Vec<PathBuf>) -> Result<Self> {
        for dir in &dirs {
            anyhow::ensure!(
                dir.exists(),
                "--debuginfo {}: no such file or directory",
                dir.display()
            );
        }
        Ok(FrameSources {
            resolver: SourceResolver::new(DebugInfoSearch::new(dirs)?),
        })
    }

    /// The lines of every frame of a stack that starts at the flush function (or, where the
    /// unwinder left it out, at the caller).
    pub fn stack(&mut self, frames: &[Frame]) -> Vec<FrameLines> {
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| self.frame(f, is_return_address(frames, i)))
            .collect()
    }

    /// The lines of one frame; `is_return_address` for every frame but the probed function's.
    pub fn frame(&mut self, frame: &Frame, is_return_address: bool) -> FrameLines {
        let func = frame.func.as_deref()?;
        self.resolver.resolve(
            frame.module.as_deref(),
            func,
            frame.offset,
            is_return_address,
        )
    }

    /// The lines of a call site's caller frame: a return address.
    pub fn caller(&mut self, caller: Option<&Frame>) -> FrameLines {
        self.frame(caller?, true)
    }

    /// Bytes of debug info held (for the bench's memory figure).
    pub fn memory_bytes(&self) -> usize {
        self.resolver.memory_bytes()
    }
}

/// The innermost frame is where the probe stopped the flush function, not a return address; the
/// rest are. With fexit on 7.x the stack starts at the caller, whose address is a return one.
fn is_return_address(frames: &[Frame], i: usize) -> bool {
    i > 0 || !frames.first().is_some_and(Frame::is_flush_function)
}

/// `file:line` of the innermost level: for a flush inside an inlined helper, the helper's line.
pub fn location(lines: Option<&[SourceLine]>) -> Option<String> {
    let first = lines?.first()?;
    Some(format!("{}:{}", first.file.as_deref()?, first.line?))
}

/// One entry of the JSON `stack_source`.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// The frame as `stack` has it, or an inlined function's name.
    pub frame: String,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    pub inlined: bool,
}

/// The stack with one entry per inline level, innermost first; None when no frame has a line.
pub fn entries(frames: &[Frame], lines: &[FrameLines]) -> Option<Vec<SourceEntry>> {
    if lines.iter().all(Option::is_none) {
        return None;
    }
    let mut out = Vec::new();
    for (frame, lines) in frames.iter().zip(lines) {
        let Some(lines) = lines.as_deref().filter(|l| !l.is_empty()) else {
            out.push(SourceEntry {
                frame: frame.to_string(),
                file: None,
                line: None,
                inlined: false,
            });
            continue;
        };
        for l in lines {
            out.push(SourceEntry {
                frame: if l.inlined {
                    l.function.to_string()
                } else {
                    frame.to_string()
                },
                file: l.file.clone(),
                line: l.line,
                inlined: l.inlined,
            });
        }
    }
    Some(out)
}

/// A frame's lines in a Call Trace, as decode_stacktrace.sh shows an inline chain: each
/// inlined function on its own line, marked, before the frame it was inlined into, which gains
/// its own `(file:line)`.
pub fn trace_lines(frame: &Frame, lines: Option<&[SourceLine]>) -> Vec<String> {
    let Some(lines) = lines.filter(|l| !l.is_empty()) else {
        return vec![format!(" {}", frame.with_size())];
    };
    lines
        .iter()
        .map(|l| {
            let at = at(l);
            if l.inlined {
                format!(" {}{at} (inlined)", l.function)
            } else {
                format!(" {}{at}", frame.with_size())
            }
        })
        .collect()
}

/// ` (file:line)`, or nothing without a file.
pub fn at(l: &SourceLine) -> String {
    match (&l.file, l.line) {
        (Some(f), Some(n)) => format!(" ({f}:{n})"),
        (Some(f), None) => format!(" ({f})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{interned::intern, sources::line};

    fn frame(func: &str, offset: u64, module: Option<&str>) -> Frame {
        Frame {
            addr: 0xffffffffc0a01000 + offset,
            func: Some(intern(func)),
            offset,
            size: 0x40,
            module: module.map(intern),
        }
    }

    fn inline_chain() -> (Vec<Frame>, Vec<FrameLines>) {
        let frames = vec![
            frame("__flush_workqueue", 5, None),
            frame("wqflush_test_flush_inline", 0x11, Some("wqflush_test")),
            frame("wqflush_test_write", 0x185, Some("wqflush_test")),
        ];
        let lines = vec![
            None,
            Some(Arc::from(vec![
                line("wqflush_test_inline_helper", "wqflush_test.c", 120, true),
                line("wqflush_test_flush_inline", "wqflush_test.c", 126, false),
            ])),
            Some(Arc::from(vec![line(
                "wqflush_test_write",
                "wqflush_test.c",
                640,
                false,
            )])),
        ];
        (frames, lines)
    }

    #[test]
    fn only_the_probed_flush_function_is_not_a_return_address() {
        let (frames, _) = inline_chain();
        assert!(!is_return_address(&frames, 0));
        assert!(is_return_address(&frames, 1));
        // 7.x with fexit: the stack starts at the caller.
        assert!(is_return_address(&frames[1..], 0));
    }

    #[test]
    fn the_record_source_is_the_innermost_level() {
        let (_, lines) = inline_chain();
        assert_eq!(
            location(lines[1].as_deref()).as_deref(),
            Some("wqflush_test.c:120")
        );
        assert_eq!(location(None), None);
    }

    #[test]
    fn entries_expand_inline_levels_innermost_first() {
        let (frames, lines) = inline_chain();
        let got = entries(&frames, &lines).unwrap();
        let brief: Vec<(&str, Option<u32>, bool)> = got
            .iter()
            .map(|e| (e.frame.as_str(), e.line, e.inlined))
            .collect();
        assert_eq!(
            brief,
            [
                ("__flush_workqueue+0x5", None, false),
                ("wqflush_test_inline_helper", Some(120), true),
                (
                    "wqflush_test_flush_inline+0x11 [wqflush_test]",
                    Some(126),
                    false
                ),
                ("wqflush_test_write+0x185 [wqflush_test]", Some(640), false),
            ]
        );
        assert_eq!(entries(&frames, &[None, None, None]), None);
    }

    #[test]
    fn trace_lines_mark_the_inlined_level_before_its_frame() {
        let (frames, lines) = inline_chain();
        assert_eq!(
            trace_lines(&frames[1], lines[1].as_deref()),
            [
                " wqflush_test_inline_helper (wqflush_test.c:120) (inlined)",
                " wqflush_test_flush_inline+0x11/0x40 [wqflush_test] (wqflush_test.c:126)",
            ]
        );
        assert_eq!(
            trace_lines(&frames[0], None),
            [" __flush_workqueue+0x5/0x40"]
        );
    }
}
