//! pushgate worker library.
