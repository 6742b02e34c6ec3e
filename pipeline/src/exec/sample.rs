//! `Sample`: the images of one manifest item under their keys (`image`,
//! `label`, ...), as they travel through the transform chain.

use std::sync::Arc;

use crate::transforms::Image;

/// The keyed images of one item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// `(key, image)` in the recipe's key order.
    pub images: Vec<(String, Image)>,
}

impl Sample {
    /// A sample holding `image` under the key `image`.
    pub fn single(image: Image) -> Sample {
        Sample {
            images: vec![("image".into(), image)],
        }
    }

    /// The image under `key`.
    pub fn get(&self, key: &str) -> Option<&Image> {
        self.images.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The image under `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Image> {
        self.images
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Bytes of voxel data held.
    pub fn bytes(&self) -> usize {
        self.images.iter().map(|(_, i)| i.data.len() * 4).sum()
    }
}

/// A prepared (prefix) sample shared between the views cut from it and, in
/// an in-memory cache, between epochs.
pub type Prepared = Arc<Sample>;
