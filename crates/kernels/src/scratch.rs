//! Per-thread reusable scratch buffers for the kernels' per-call work areas (packed activations,
//! score tiles, accumulators). A fresh `vec![0; n]` above glibc's mmap threshold is mapped, faulted
//! in page by page and unmapped on every call; reusing the thread's previous buffer costs one
//! `memset`. A [`Buf`] returns its storage to the pool of the thread that drops it; the pool keeps
//! at most [`KEEP`] buffers per element type and thread, none over [`MAX_BYTES`].

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per element type and thread.
const KEEP: usize = 4;
/// Largest buffer kept (larger ones are freed on drop).
const MAX_BYTES: usize = 64 << 20;

/// An element type with a per-thread pool.
pub(crate) trait Pooled: Copy + Default + 'static {
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
}

macro_rules! pooled {
    ($($t:ty => $name:ident),*) => {$(
        thread_local! {
            static $name: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) };
        }
        impl Pooled for $t {
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                $name.with(|p| match p.try_borrow_mut() {
                    Ok(mut p) => f(&mut p),
                    Err(_) => f(&mut Vec::new()),
                })
            }
        }
    )*};
}

pooled!(u8 => POOL_U8, i16 => POOL_I16, i32 => POOL_I32, f32 => POOL_F32, u16 => POOL_U16, u32 => POOL_U32);

/// A zero-filled (`T::default()`) buffer of a fixed length, taken from this thread's pool.
pub(crate) struct Buf<T: Pooled> {
    v: Vec<T>,
}

impl<T: Pooled> Buf<T> {
    /// `len` elements, all `T::default()`.
    pub(crate) fn zeroed(len: usize) -> Buf<T> {
        Self::filled(len, T::default())
    }

    /// `len` elements, all `x`.
    pub(crate) fn filled(len: usize, x: T) -> Buf<T> {
        let mut v = T::with_pool(|p| {
            let i = p.iter().position(|b| b.capacity() >= len).or(if p.is_empty() { None } else { Some(p.len() - 1) });
            i.map(|i| p.swap_remove(i)).unwrap_or_default()
        });
        v.clear();
        v.resize(len, x);
        Buf { v }
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.capacity() * std::mem::size_of::<T>() <= MAX_BYTES {
            T::with_pool(|p| {
                if p.len() < KEEP {
                    p.push(v);
                }
            });
        }
    }
}

impl<T: Pooled> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_come_back_zeroed_and_sized() {
        let mut a = Buf::<i32>::zeroed(1000);
        a.iter_mut().for_each(|x| *x = 7);
        let cap = a.v.capacity();
        drop(a);
        let b = Buf::<i32>::zeroed(500);
        assert_eq!(b.len(), 500);
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.v.capacity(), cap, "the dropped buffer is reused");
        let c = Buf::<i32>::filled(2000, -1);
        assert_eq!(c.len(), 2000);
        assert!(c.iter().all(|&x| x == -1));
    }

    #[test]
    fn nested_takes_get_distinct_buffers() {
        let mut a = Buf::<f32>::zeroed(64);
        let mut b = Buf::<f32>::zeroed(64);
        a[0] = 1.0;
        b[0] = 2.0;
        assert_eq!((a[0], b[0]), (1.0, 2.0));
    }
}
