using Dingo.Model;
using Dingo.Tests.Support;

namespace Dingo.Tests.Cells;

/// <summary>A cell whose data file system is nearly full says so and takes no new node (real cell, etcd and broker).</summary>
public sealed class CellDiskTests
{
    [Fact]
    public async Task A_nearly_full_disk_shows_on_the_cell_in_status_and_in_last_operation_and_no_node_is_placed()
    {
        // More free space than this machine has: the check must trip.
        var settings = TestPlatform.NewSettings(extra: "dingo.cell.min-free-disk = 99999GiB");
        await using var platform = await TestPlatform.StartAsync(cells: 1, settings, ownsData: true);
        var store = platform.Store;

        await Eventually.UntilAsync(async () => (await store.GetAsync<CellInfo>(store.Keys.Cell("cell-1"), CancellationToken.None))?.Value.Problem?.Contains("disk nearly full", StringComparison.Ordinal) == true,
            TimeSpan.FromSeconds(30), "cell-1 registered with its disk problem");

        var (status, _) = await platform.SendAsync(HttpMethod.Put, "/v2/service_instances/disk-1?accepts_incomplete=true", TestPlatform.ProvisionBody());
        Assert.Equal(202, status);
        string? description = null;
        await Eventually.UntilAsync(async () =>
        {
            var (_, op) = await platform.SendAsync(HttpMethod.Get, "/v2/service_instances/disk-1/last_operation");
            description = (string?)op["description"];
            return description?.Contains("disk nearly full", StringComparison.Ordinal) == true;
        }, TimeSpan.FromSeconds(30), "last_operation naming the full disk");
        Assert.Contains("cell-1", description, StringComparison.Ordinal);
        Assert.Empty(await store.ListAsync<NodeSpec>(store.Keys.Nodes("disk-1"), CancellationToken.None));

        using var output = new StringWriter();
        Assert.Equal(0, await Dingo.Cli.StatusCommand.RunAsync(settings, output, CancellationToken.None));
        Assert.Contains("disk nearly full", output.ToString(), StringComparison.Ordinal);
        // `dingo status --json`: the same view for scripts, the cell's problem and the instance's operation in it.
        using var json = new StringWriter();
        Assert.Equal(0, await Dingo.Cli.StatusCommand.RunAsync(settings, json, CancellationToken.None, json: true));
        var view = System.Text.Json.Nodes.JsonNode.Parse(json.ToString())!.AsObject();
        Assert.Contains("disk nearly full", (string?)view["cells"]!.AsArray().Single(c => (string?)c!["id"] == "cell-1")!["problem"], StringComparison.Ordinal);
        var instance = view["instances"]!.AsArray().Single(i => (string?)i!["id"] == "disk-1")!;
        Assert.NotNull((string?)instance["operation"]);
        Assert.Empty(instance["nodes"]!.AsArray());

        var (deleted, _) = await platform.SendAsync(HttpMethod.Delete, $"/v2/service_instances/disk-1?accepts_incomplete=true&service_id={Catalog.ServiceId}&plan_id={Catalog.SoloPlanId}");
        Assert.Equal(202, deleted);
        await platform.WaitForOperationAsync("disk-1", TimeSpan.FromSeconds(60));
    }
}
