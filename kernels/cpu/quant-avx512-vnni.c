/*
 * kernels/cpu/quant-avx512-vnni.c - the AVX-512 kernels again, with AVX512-VNNI: quant-avx512.c compiled
 * with PI_AVX512_VNNI defined (its header says what changes) and -mavx512vnni, into the table
 * pi_kernels_avx512vnni_raw. Called only through dispatch.c after the CPUID check for AVX512_VNNI.
 */
#define PI_AVX512_VNNI 1
#include "kernels/cpu/quant-avx512.c"
