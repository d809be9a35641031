//! The matrix products on cuBLAS: f16 weights and activations, f32
//! accumulation and f32 output (the residual stream stays f32, as on the CPU).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::f16;

use super::CudaError;

pub struct Gemm {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
}

impl Gemm {
    pub fn new(stream: Arc<CudaStream>) -> Result<Gemm, CudaError> {
        Ok(Gemm {
            blas: CudaBlas::new(stream.clone())?,
            stream,
        })
    }

    /// `y[rows, n] = x[rows, k] w[n, k]ᵀ`, plus `y` as it was when `accumulate`
    /// (the residual add, fused into the product). All row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        x: &CudaSlice<f16>,
        w: &CudaSlice<f16>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        n: usize,
        k: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        assert!(x.len() >= rows * k && w.len() == n * k && y.len() >= rows * n);
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let int = |v: usize| i32::try_from(v).expect("sizes are checked to fit an int at load");
        let (w_ptr, _w_done) = w.device_ptr(&self.stream);
        let (x_ptr, _x_done) = x.device_ptr(&self.stream);
        let (y_ptr, _y_done) = y.device_ptr_mut(&self.stream);
        // cuBLAS is column-major: row-major `y[rows, n]` is its `n × rows` matrix
        // `Yc = Wᵀ X`, where row-major `w[n, k]` reads as a `k × n` matrix
        // (transposed: `Wᵀ`) and `x[rows, k]` as `k × rows`.
        // SAFETY: the three pointers are live device allocations of the sizes
        // asserted above, in the stated types; alpha and beta are f32 as the
        // 32F compute type requires and outlive the (stream-ordered) call, which
        // reads them before returning in host pointer mode, cuBLAS's default.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                int(n),
                int(rows),
                int(k),
                &alpha as *const f32 as *const c_void,
                w_ptr as *const c_void,
                cudaDataType::CUDA_R_16F,
                int(k),
                x_ptr as *const c_void,
                cudaDataType::CUDA_R_16F,
                int(k),
                &beta as *const f32 as *const c_void,
                y_ptr as *mut c_void,
                cudaDataType::CUDA_R_32F,
                int(n),
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }
}
