//! `Either`: one record type for the two inputs of a join.

use serde::{Deserialize, Serialize};

/// A record of the left or of the right input of a two-input operator.
///
/// The runtime's operators read inputs of one type; a join tags each side's records with
/// `Left`/`Right` on the way in (a forward map fused into the upstream task) and reads both
/// tagged streams in one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Either<L, R> {
    /// A record of the left input.
    Left(L),
    /// A record of the right input.
    Right(R),
}

impl<L, R> Either<L, R> {
    /// The left record, if it is one.
    pub fn left(self) -> Option<L> {
        match self {
            Either::Left(l) => Some(l),
            Either::Right(_) => None,
        }
    }

    /// The right record, if it is one.
    pub fn right(self) -> Option<R> {
        match self {
            Either::Left(_) => None,
            Either::Right(r) => Some(r),
        }
    }

    /// Whether it is a left record.
    pub fn is_left(&self) -> bool {
        matches!(self, Either::Left(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_side_is_taken_apart() {
        let left: Either<u8, &str> = Either::Left(1);
        let right: Either<u8, &str> = Either::Right("r");
        assert!(left.is_left() && !right.is_left());
        assert_eq!((left.left(), left.right()), (Some(1), None));
        assert_eq!((right.left(), right.right()), (None, Some("r")));
    }
}
