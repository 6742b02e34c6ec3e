//! Checkpoints: safetensors save/load of `VarMap`s and optimiser state, and
//! import of PyTorch `.pth` checkpoints (3DINO/DINOv2 layouts) without
//! executing pickled code.

mod pickle;
mod pth;
mod safetensors_io;
mod threedino;

pub use pth::read_pth;
pub use safetensors_io::{
    CHECKSUMS_KEY, LoadReport, load_into_varmap, load_tensors, load_varmap, save_tensors,
    save_varmap,
};
pub use threedino::{ThreeDinoWeights, load_backbone, map_3dino_key, read_weights};
