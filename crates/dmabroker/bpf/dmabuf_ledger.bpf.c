// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * dmabroker's ledger of every dma-buf on the machine: an `iter/dmabuf` BPF
 * iterator (Linux >= 6.16) that writes one fixed-size binary record per
 * dma-buf (struct ledger_record below; crates/dmabroker/src/accounting/
 * bpf_iter.rs parses it).
 *
 * No vmlinux.h and no libbpf headers: the few kernel structs it reads are
 * declared here with only the fields used, under
 * __attribute__((preserve_access_index)), so clang emits BTF CO-RE
 * relocations and the loader (aya) fixes the offsets against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux). Field names are those of
 * include/linux/dma-buf.h (size, file, exp_name, name) and include/linux/fs.h
 * (f_inode, i_ino, i_ctime_sec: the dma-buf inode's ctime is its creation
 * time, set by alloc_anon_inode; the age proxy). The importers are the
 * attachments (struct dma_buf_attachment, list dma_buf.attachments): their
 * number and the first one's device name (kobj.name: "vgem", a PCI address)
 * tell which driver holds a buffer no process holds.
 *
 * Built by crates/dmabroker/build.rs:
 *   clang -target bpf -O2 -g -c dmabuf_ledger.bpf.c -o dmabuf_ledger.bpf.o
 */

typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))

/* DMA_BUF_NAME_LEN of include/uapi/linux/dma-buf.h. */
#define NAME_LEN 32

struct seq_file;

struct inode {
	unsigned long i_ino;
	__s64 i_ctime_sec;
} CORE;

struct file {
	struct inode *f_inode;
} CORE;

struct list_head {
	struct list_head *next;
} CORE;

struct kobject {
	const char *name;
} CORE;

struct device {
	struct kobject kobj;
} CORE;

struct dma_buf_attachment {
	struct device *dev;
	struct list_head node;
} CORE;

struct dma_buf {
	unsigned long size;
	struct list_head attachments;
	struct file *file;
	const char *exp_name;
	const char *name;
} CORE;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} CORE;

struct bpf_iter__dmabuf {
	struct bpf_iter_meta *meta;
	struct dma_buf *dmabuf;
} CORE;

/* Helper ids of include/uapi/linux/bpf.h. */
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)115;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_seq_write)(struct seq_file *m, const void *data, __u32 len) = (void *)127;

/* 136 bytes, little-endian, no padding: mirrored by bpf_iter.rs. */
struct ledger_record {
	__u64 inode;
	__u64 size;
	__s64 ctime_sec; /* 0: unknown */
	__u64 flags;     /* bit 0: has a name */
	__u64 attachments; /* counted up to MAX_ATTACH */
	char exporter[NAME_LEN];
	char name[NAME_LEN];
	char importer[NAME_LEN]; /* device of the first attachment */
};

#define MAX_ATTACH 16
/* Read a field of a kernel pointer, its offset relocated against the kernel. */
#define READ(dst, p) bpf_probe_read_kernel(&(dst), sizeof(dst), __builtin_preserve_access_index(&(p)))

char _license[] SEC("license") = "GPL";

SEC("iter/dmabuf")
int dmabroker_ledger(struct bpf_iter__dmabuf *ctx)
{
	struct dma_buf *dmabuf = ctx->dmabuf;
	struct seq_file *seq = ctx->meta->seq;
	struct ledger_record rec = {};
	struct inode *inode;
	const char *name;

	if (!dmabuf)
		return 0;
	rec.size = dmabuf->size;
	inode = dmabuf->file->f_inode;
	rec.inode = inode->i_ino;
	/* i_ctime_sec since 6.11; the iterator needs 6.16. */
	rec.ctime_sec = inode->i_ctime_sec;
	bpf_probe_read_kernel_str(rec.exporter, sizeof(rec.exporter), dmabuf->exp_name);
	/* Set by DMA_BUF_SET_NAME (a user string): read as is, parsed as bytes. */
	name = dmabuf->name;
	if (name) {
		rec.flags |= 1;
		bpf_probe_read_kernel_str(rec.name, sizeof(rec.name), name);
	}
	/* Attachments, read by probe (list walking of a BTF pointer is not verifiable). */
	struct list_head *head = &dmabuf->attachments, *pos = 0;
	READ(pos, head->next);
	for (int i = 0; i < MAX_ATTACH && pos && pos != head; i++) {
		struct dma_buf_attachment *att = (void *)((char *)pos -
			__builtin_preserve_field_info(((struct dma_buf_attachment *)0)->node, 0));
		if (i == 0) {
			struct device *dev = 0;
			const char *dev_name = 0;
			READ(dev, att->dev);
			if (dev) {
				READ(dev_name, dev->kobj.name);
				if (dev_name)
					bpf_probe_read_kernel_str(rec.importer, sizeof(rec.importer), dev_name);
			}
		}
		rec.attachments++;
		READ(pos, pos->next);
	}
	bpf_seq_write(seq, &rec, sizeof(rec));
	return 0;
}
