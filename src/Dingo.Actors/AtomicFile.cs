using System.Runtime.InteropServices;

namespace Dingo;

/// <summary>
/// Small files a cell must never find half-written (which etcd it placed its data from, which instance a node belongs
/// to): written to a temporary file beside the target, flushed, renamed over it, and the folder flushed, so a crash at
/// any point leaves either the old file or the new one. Mode 0600: only the cell's own user reads them.
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public static class AtomicFile
{
    public static async Task WriteAsync(string path, string text, CancellationToken ct)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? throw new ArgumentException($"{path} has no folder", nameof(path));
        Directory.CreateDirectory(dir);
        var temp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            await using (var stream = new FileStream(temp, new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            }))
            {
                await stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes(text), ct).ConfigureAwait(false);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
        FlushFolder(dir);
    }

    /// <summary>Makes a rename or delete in the folder durable (fsync of the folder itself).</summary>
    public static void FlushFolder(string dir)
    {
        var fd = Native.open(dir, Native.ORdOnlyDirectory);
        if (fd < 0) throw new IOException($"cannot open {dir} to flush it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (Native.fsync(fd) != 0) throw new IOException($"flushing {dir} failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally
        {
            Native.close(fd);
        }
    }

    private static class Native
    {
        [DllImport("libc", SetLastError = true)]
        public static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int fsync(int fd);

        [DllImport("libc")]
        public static extern int close(int fd);

        public const int ORdOnlyDirectory = 0x10000; // O_RDONLY | O_DIRECTORY (Linux)
    }
}
