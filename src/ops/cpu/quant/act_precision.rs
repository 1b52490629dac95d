//! How the activations of a product with a block-quantized matrix are rounded before the integer
//! dot products. `Int8` is ggml's scheme (one 8-bit code per value, one scale per block); `Int16`
//! splits every activation block into two 8-bit planes — the block's codes, then the codes of what
//! they left over (`x - d·q`, at most `d/2` per value) — and runs the same integer kernels on both,
//! adding the two results: about 15 bits per value (error at most `amax / 64516` of its block
//! instead of `amax / 254`) for the same weights read once. Float weights always see f32.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ActPrecision {
    /// One 8-bit plane: ggml's (and llama.cpp's) arithmetic; the fastest.
    #[default]
    Int8,
    /// Two 8-bit planes (≈15 bits): the accurate mode.
    Int16,
}

impl ActPrecision {
    /// 8-bit planes per activation row.
    pub fn planes(self) -> usize {
        match self {
            ActPrecision::Int8 => 1,
            ActPrecision::Int16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ActPrecision::Int8 => "int8",
            ActPrecision::Int16 => "int16",
        }
    }
}
