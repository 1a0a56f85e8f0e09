pub const NUM_CLASSES: usize = 12;
