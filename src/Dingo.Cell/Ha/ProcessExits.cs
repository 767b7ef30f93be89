using System.Runtime.InteropServices;

namespace Dingo.Ha;

/// <summary>
/// Tells when a process ends, any process of this host (not only a child): a PostgreSQL that crashed under a living
/// agent is seen at once instead of at the agent's next pass, up to a loop-wait later (bench/Chaos kill-pg: a quarter of
/// the stall on average was that wait). Linux pidfds (<c>pidfd_open</c>, 5.3+): a pidfd becomes readable when its
/// process exits. One thread per process polls all of them, and costs nothing while nothing ends. Where pidfds are not
/// available, <see cref="Watch"/> answers null and the passes find the exit as before.
/// </summary>
public sealed class ProcessExits : IDisposable
{
    public static ProcessExits Shared { get; } = new();

    private readonly Lock _gate = new();
    private readonly Dictionary<int, Watching> _watched = [];
    private int _wakeFd = -1;
    private Thread? _thread;
    private bool _disposed;

    /// <summary>A process watched until it ends (then <see cref="Ended"/>) or until disposed.</summary>
    public sealed class Watching : IDisposable
    {
        private readonly ProcessExits _owner;
        private readonly Action _onExit;
        private int _ended;

        internal Watching(ProcessExits owner, int fd, Action onExit) => (_owner, Fd, _onExit) = (owner, fd, onExit);

        internal int Fd { get; }
        public bool Ended => Volatile.Read(ref _ended) == 1;

        internal void Fire()
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0) ThreadPool.QueueUserWorkItem(_ => _onExit());
        }

        public void Dispose() => _owner.Forget(this);
    }

    /// <summary>
    /// Calls <paramref name="onExit"/> (on the thread pool, once) when process <paramref name="pid"/> ends. Null when it
    /// cannot be watched: already gone, or no pidfds here.
    /// </summary>
    public Watching? Watch(int pid, Action onExit)
    {
        ArgumentNullException.ThrowIfNull(onExit);
        var fd = (int)Native.syscall(Native.SysPidfdOpen, pid, 0);
        if (fd < 0) return null;
        var watching = new Watching(this, fd, onExit);
        lock (_gate)
        {
            if (_disposed || !EnsureThread())
            {
                _ = Native.close(fd);
                return null;
            }
            _watched[fd] = watching;
        }
        Wake();
        return watching;
    }

    private void Forget(Watching watching)
    {
        lock (_gate)
        {
            if (!_watched.Remove(watching.Fd, out var known) || !ReferenceEquals(known, watching)) return;
            _ = Native.close(watching.Fd);
        }
        Wake();
    }

    private bool EnsureThread()
    {
        if (_thread is not null) return true;
        _wakeFd = Native.eventfd(0, Native.EfdNonBlock | Native.EfdCloexec);
        if (_wakeFd < 0) return false;
        _thread = new Thread(Run) { IsBackground = true, Name = "dingo-process-exits" };
        _thread.Start();
        return true;
    }

    private void Wake()
    {
        int fd;
        lock (_gate) fd = _wakeFd;
        if (fd < 0) return;
        _ = Native.write(fd, BitConverter.GetBytes(1UL), 8);
    }

    private void Run()
    {
        while (true)
        {
            Native.PollFd[] fds;
            lock (_gate)
            {
                if (_disposed)
                {
                    _ = Native.close(_wakeFd);
                    _wakeFd = -1;
                    return;
                }
                fds = new Native.PollFd[_watched.Count + 1];
                fds[0] = new Native.PollFd { Fd = _wakeFd, Events = Native.PollIn };
                var i = 1;
                foreach (var fd in _watched.Keys) fds[i++] = new Native.PollFd { Fd = fd, Events = Native.PollIn };
            }
            var n = Native.poll(fds, (ulong)fds.Length, -1);
            if (n < 0) continue; // EINTR; anything else is a closed descriptor, dropped from the next round's list
            if (fds[0].Revents != 0) Drain(fds[0].Fd);
            for (var i = 1; i < fds.Length; i++)
            {
                if ((fds[i].Revents & Native.PollIn) == 0) continue;
                lock (_gate)
                {
                    // The descriptor may have been forgotten (and its number reused) while this round polled: ask again.
                    if (!_watched.TryGetValue(fds[i].Fd, out var watching) || !Readable(fds[i].Fd)) continue;
                    _watched.Remove(fds[i].Fd);
                    _ = Native.close(fds[i].Fd);
                    watching.Fire();
                }
            }
        }
    }

    private static bool Readable(int fd)
    {
        var one = new[] { new Native.PollFd { Fd = fd, Events = Native.PollIn } };
        return Native.poll(one, 1, 0) == 1 && (one[0].Revents & Native.PollIn) != 0;
    }

    private static void Drain(int fd) => _ = Native.read(fd, new byte[8], 8);

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            foreach (var fd in _watched.Keys) _ = Native.close(fd);
            _watched.Clear();
        }
        Wake();
    }

    private static class Native
    {
        public const long SysPidfdOpen = 434; // the same number on every Linux architecture
        public const short PollIn = 0x001;
        public const int EfdNonBlock = 0x800, EfdCloexec = 0x80000;

        [StructLayout(LayoutKind.Sequential)]
        public struct PollFd
        {
            public int Fd;
            public short Events;
            public short Revents;
        }

        [DllImport("libc", SetLastError = true)]
        public static extern long syscall(long number, int pid, uint flags);

        [DllImport("libc", SetLastError = true)]
        public static extern int poll([In, Out] PollFd[] fds, ulong count, int timeoutMs);

        [DllImport("libc", SetLastError = true)]
        public static extern int eventfd(uint initial, int flags);

        [DllImport("libc", SetLastError = true)]
        public static extern nint read(int fd, [Out] byte[] buffer, nuint count);

        [DllImport("libc", SetLastError = true)]
        public static extern nint write(int fd, [In] byte[] buffer, nuint count);

        [DllImport("libc")]
        public static extern int close(int fd);
    }
}
