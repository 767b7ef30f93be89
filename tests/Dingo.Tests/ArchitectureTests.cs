using System.Reflection;
using System.Runtime.CompilerServices;
using Dingo.Tests.Support;

namespace Dingo.Tests;

/// <summary>
/// The house rules of docs/architecture.md, read from the compiled assemblies: dependencies point one way (Broker and
/// Cell on Actors, never back; the broker never on the cell), what touches a cell's machine (Docker, the web stack of
/// the cell's endpoints) stays out of Dingo.Actors, and no assembly opens its internals to an application.
/// </summary>
[Trait(Tier.Name, Tier.Fast)]
public sealed class ArchitectureTests
{
    private static readonly Assembly Actors = typeof(Dingo.Model.NodeSpec).Assembly;
    private static readonly Assembly Cell = typeof(Dingo.Cells.LocalProcessRuntime).Assembly;
    private static readonly Assembly Broker = typeof(Dingo.Broker.BindingService).Assembly;
    private static readonly Assembly Cli = typeof(Dingo.Cli.StatusCommand).Assembly;

    private static IReadOnlySet<string> References(Assembly assembly) =>
        assembly.GetReferencedAssemblies().Select(a => a.Name!).ToHashSet(StringComparer.Ordinal);

    [Fact]
    public void The_assemblies_are_the_ones_the_rules_name()
    {
        Assert.Equal(["Dingo.Actors", "Dingo.Cell", "Dingo.Broker", "dingo"], new[] { Actors, Cell, Broker, Cli }.Select(a => a.GetName().Name));
    }

    [Fact]
    public void Actors_depends_on_no_application()
    {
        var refs = References(Actors);
        Assert.DoesNotContain("Dingo.Cell", refs);
        Assert.DoesNotContain("Dingo.Broker", refs);
        Assert.DoesNotContain("dingo", refs);
    }

    [Fact]
    public void Broker_and_cell_depend_on_actors_and_never_on_each_other()
    {
        Assert.Contains("Dingo.Actors", References(Broker));
        Assert.Contains("Dingo.Actors", References(Cell));
        Assert.DoesNotContain("Dingo.Cell", References(Broker));
        Assert.DoesNotContain("Dingo.Broker", References(Cell));
    }

    [Fact]
    public void What_touches_a_cells_machine_stays_out_of_actors()
    {
        var refs = References(Actors);
        Assert.DoesNotContain(refs, r => r.StartsWith("Docker.DotNet", StringComparison.Ordinal));
        Assert.DoesNotContain(refs, r => r.StartsWith("Microsoft.AspNetCore", StringComparison.Ordinal));
        // The machine-side types live in the cell, whatever their namespace.
        foreach (var name in new[] { "Dingo.Cells.DockerRuntime", "Dingo.Cells.LocalProcessRuntime", "Dingo.Routing.TcpRouter",
                     "Dingo.Routing.KernelRouter", "Dingo.Backups.WalArchiver", "Dingo.Ha.NodeHealthServer", "Dingo.Ha.NodeAgent", "Dingo.Ha.FenceGuard" })
        {
            Assert.Null(Actors.GetType(name));
            Assert.NotNull(Cell.GetType(name));
        }
    }

    [Fact]
    public void No_assembly_opens_its_internals_to_an_application()
    {
        foreach (var assembly in new[] { Actors, Cell, Broker, Cli })
        {
            var friends = assembly.GetCustomAttributes<InternalsVisibleToAttribute>().Select(a => a.AssemblyName).ToList();
            Assert.All(friends, f => Assert.Equal("Dingo.Tests", f));
        }
    }

    [Fact]
    public void No_folder_of_an_assembly_uses_another_in_a_circle()
    {
        var failures = new List<string>();
        foreach (var assembly in new[] { Actors, Cell, Broker, Cli })
        {
            var graph = FolderGraph.Read(assembly.Location);
            Assert.NotEmpty(graph.Folders);
            foreach (var cycle in graph.Cycles())
                failures.Add($"{assembly.GetName().Name}: {string.Join(" <-> ", cycle)}\n    " + string.Join("\n    ", graph.Explain(cycle)));
        }
        Assert.True(failures.Count == 0, "folders that use each other in a circle:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void The_folder_reader_sees_a_circle_made_inside_method_bodies_and_lambdas()
    {
        var graph = FolderGraph.Read(typeof(ArchitectureTests).Assembly.Location);
        Assert.Contains(graph.Cycles(), c => c.SequenceEqual(["Dingo.Tests.FolderCycleSample.Left", "Dingo.Tests.FolderCycleSample.Right"]));
    }
}
