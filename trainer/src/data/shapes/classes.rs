//! The classes of the procedural video dataset: class `k` = `shape·6 + colour·2 + motion`.
//! A config's `model.num_classes` is checked against [`NUM_CLASSES`] when it reads `shapes`.

/// The number of classes: every (shape, colour, motion).
pub const NUM_CLASSES: usize = SHAPES.len() * COLOURS.len() * MOTIONS.len();
pub const SHAPES: [&str; 2] = ["square", "disc"];
pub const COLOURS: [&str; 3] = ["red", "green", "blue"];
pub const MOTIONS: [&str; 2] = ["horizontal", "vertical"];

/// Human-readable class name, e.g. `red disc, vertical`.
pub fn class_name(k: usize) -> String {
    format!("{} {}, {}", COLOURS[(k / 2) % 3], SHAPES[k / 6], MOTIONS[k % 2])
}
