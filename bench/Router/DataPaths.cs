using System.Net;
using System.Reflection;
using Dingo.Routing;
using Microsoft.Extensions.Logging;

namespace Dingo.Bench.Router;

/// <summary>A way to the bench's PostgreSQL: a 127.0.0.1 port and what serves it.</summary>
internal sealed record BenchPath(string Name, int Port, bool IsDingo);

/// <summary>
/// Dingo's router data paths, created in-process on their own ports, each routing to the bench's PostgreSQL.
/// Always the user-space <see cref="TcpRouter"/>; also the kernel path when Dingo.Cell has
/// <c>Dingo.Routing.KernelRouter</c> (found by reflection, so this compiles before that class exists) and it says
/// it is available here. Disposal disposes every data path, the newest first.
/// </summary>
internal sealed class DataPaths : IAsyncDisposable
{
    private const string KernelTypeName = "Dingo.Routing.KernelRouter";
    private const string KernelTableName = "dingo_rbench";

    private readonly List<IAsyncDisposable> _owned = [];

    public List<BenchPath> Paths { get; } = [];

    /// <summary>Dingo paths left out, with why.</summary>
    public List<(string Name, string Reason)> Skipped { get; } = [];

    public async Task CreateAsync(int targetPort, ILogger logger, CancellationToken ct)
    {
        var target = new IPEndPoint(IPAddress.Loopback, targetPort);

        var userspace = new TcpRouter(IPAddress.Loopback, logger);
        _owned.Add(userspace);
        await AddAsync("dingo-userspace", userspace, target, required: true, ct);

        try
        {
            await AddKernelAsync(target, logger, ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            Skipped.Add(("dingo-kernel", $"{ex.GetType().Name}: {ex.Message}"));
        }
    }

    private async Task AddKernelAsync(IPEndPoint target, ILogger logger, CancellationToken ct)
    {
        var kernel = typeof(TcpRouter).Assembly.GetType(KernelTypeName);
        if (kernel is null)
        {
            Skipped.Add(("dingo-kernel", $"{KernelTypeName} is not in {typeof(TcpRouter).Assembly.GetName().Name}"));
            return;
        }
        var available = kernel.GetMethod("Available", BindingFlags.Public | BindingFlags.Static, [typeof(string).MakeByRefType()]);
        var ctor = kernel.GetConstructor([typeof(IPAddress), typeof(string), typeof(TcpRouter), typeof(ILogger)]);
        if (available is null || available.ReturnType != typeof(bool) || ctor is null || !typeof(IRouteDataPath).IsAssignableFrom(kernel))
        {
            Skipped.Add(("dingo-kernel", $"{KernelTypeName} lacks `static bool Available(out string)`, the constructor "
                                          + "(IPAddress, string, TcpRouter, ILogger) or IRouteDataPath"));
            return;
        }
        object?[] availableArgs = [null];
        if (!(bool)Invoke(() => available.Invoke(null, availableArgs))!)
        {
            Skipped.Add(("dingo-kernel", $"not available here: {availableArgs[0] as string ?? "(no reason given)"}"));
            return;
        }
        var fallback = new TcpRouter(IPAddress.Loopback, logger);
        _owned.Add(fallback);
        var path = (IRouteDataPath)Invoke(() => ctor.Invoke([IPAddress.Loopback, KernelTableName, fallback, logger]))!;
        _owned.Add(path);
        await AddAsync("dingo-kernel", path, target, required: false, ct);
    }

    private async Task AddAsync(string name, IRouteDataPath path, IPEndPoint target, bool required, CancellationToken ct)
    {
        var port = Processes.FreePort();
        string? failure;
        try
        {
            await path.ApplyAsync([new Route(port, "rbench", target) { MaxConnections = 500 } /* the default per-instance limit: the kernel path then carries its ct count rule */], ct);
            failure = await Processes.ProbeAsync(port, ct);
        }
        catch (Exception ex) when (!required && ex is not OperationCanceledException)
        {
            failure = $"{ex.GetType().Name}: {ex.Message}";
        }
        if (failure is null)
        {
            Paths.Add(new BenchPath(name, port, IsDingo: true));
            return;
        }
        if (required) throw new InvalidOperationException($"{name} on port {port} does not reach PostgreSQL: {failure}");
        Skipped.Add((name, $"does not reach PostgreSQL on port {port}: {failure}"));
    }

    /// <summary>Reflection calls throw TargetInvocationException; pass on what the target threw.</summary>
    private static object? Invoke(Func<object?> call)
    {
        try { return call(); }
        catch (TargetInvocationException ex) when (ex.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ex.InnerException);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        for (var i = _owned.Count - 1; i >= 0; i--)
        {
            try { await _owned[i].DisposeAsync(); }
            catch (Exception ex) { Console.Error.WriteLine($"bench: disposing {_owned[i].GetType().Name}: {ex.GetType().Name}: {ex.Message}"); }
        }
        _owned.Clear();
    }
}
