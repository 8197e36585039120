//! pushgate gateway library.
