//! Accounting: who holds which buffers on this machine (every dma-buf and dmabroker buffer, per process and user).
